// Builds the dashboard into ../assets: minified ES modules (the app, and
// chunks it imports on demand: the graph library only when the map is
// opened, so the other pages do not parse its 500 KB) and one CSS file,
// named by their content hash (so they can be cached for ever), and
// index.html naming the app and the CSS. Deterministic: the same sources and lockfile
// give the same bytes (CI rebuilds and fails on any difference).
import * as esbuild from 'esbuild';
import { readFileSync, writeFileSync, readdirSync, rmSync, mkdirSync } from 'node:fs';
import { basename, join } from 'node:path';

const out = new URL('../assets/', import.meta.url).pathname;
mkdirSync(out, { recursive: true });
for (const f of readdirSync(out)) rmSync(join(out, f));

const result = await esbuild.build({
  entryPoints: { app: 'src/main.js', style: 'src/app.css' },
  bundle: true,
  minify: true,
  format: 'esm',
  splitting: true,
  chunkNames: 'chunk-[hash]',
  target: ['es2020'],
  platform: 'browser',
  outdir: out,
  entryNames: '[name]-[hash]',
  legalComments: 'eof',
  charset: 'utf8',
  sourcemap: false,
  metafile: true,
  logLevel: 'warning',
});

const names = Object.keys(result.metafile.outputs).map((p) => basename(p));
const js = names.find((n) => n.startsWith('app-') && n.endsWith('.js'));
const css = names.find((n) => n.startsWith('style-') && n.endsWith('.css'));
if (!js || !css) throw new Error(`build: outputs ${names.join(', ')}: want app-*.js and style-*.css`);
// The chunks the app imports statically (esbuild's shared helpers) are
// preloaded by index.html, fetched alongside the app, not after it.
const jsOut = Object.keys(result.metafile.outputs).find((p) => basename(p) === js);
const preload = result.metafile.outputs[jsOut].imports
  .filter((i) => i.kind === 'import-statement')
  .map((i) => `<link rel="modulepreload" href="ui/${basename(i.path)}">`)
  .sort()
  .join('\n');
const html = readFileSync('src/index.html', 'utf8').replace('{{JS}}', js).replace('{{CSS}}', css).replace('{{PRELOAD}}', preload);
writeFileSync(join(out, 'index.html'), html);
console.log(`built ${js}, ${css}, index.html`);
