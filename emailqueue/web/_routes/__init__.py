"""The routers. Each route checks auth through a dependency and calls one function of the package."""
