// Validates vercel.json files with the Vercel CLI's own validator (the function `vercel build`
// and `vercel deploy` call). Usage: node validate_vercel_json.mjs <vercel package dir> <file>...
// Prints a JSON list: null for a valid file, else the CLI's error message.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [packageDir, ...files] = process.argv.slice(2);
const chunks = join(packageDir, "dist", "chunks");
const exporter = readdirSync(chunks).find((name) =>
  /export\{[^}]*\bvalidateConfig\}/.test(readFileSync(join(chunks, name), "utf8")),
);
if (!exporter) {
  console.error(`no chunk of ${packageDir} exports validateConfig`);
  process.exit(2);
}
const { validateConfig } = await import(pathToFileURL(join(chunks, exporter)).href);
const results = files.map((file) => {
  const error = validateConfig(JSON.parse(readFileSync(file, "utf8")));
  return error ? error.message : null;
});
console.log(JSON.stringify(results));
