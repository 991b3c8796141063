"""Tools built on the engine: `webmoe info` (summary, plan listing), `bench`, `analyze`, and the headless
Chromium harness the browser benchmark and tests drive."""
