"""Developer tools: the harness the tests run on and the authoring commands; nothing here measures (the
measurements are in bench/).

- comfy_runtime: a real ComfyUI ($COMFYUI_PATH) in this process (InProcessComfy) or as a headless HTTP server
  (ComfyServer), with this repo loaded as a custom node pack
- tiny_checkpoint: the tests' random SD1.5-format checkpoint
- comfy_families: every model family ComfyUI detects, built small with ComfyUI's own classes
- graphs: API-format prompt builders for the node tests
- style_images: small deterministic style image folders
- templates: ``python -m devtools.templates`` rewrites workflows/*.json
- browser: ComfyUI's real frontend in headless chromium; ``python -m devtools.browser shots`` refreshes the
  template screenshots
"""
