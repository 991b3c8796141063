"""What a webmoe package is, apart from who writes or reads it: the format version (stated once, in
schemas/manifest.schema.json), sealing and reading manifest.json, validation against the schemas, strict
JSON, the expert slot layout and the table of weight formats. The converter writes packages with it and both
runtimes read them with it (web/manifest.js is the browser's twin); it depends on neither."""
