"""Measurements: each command prints figures measured on this machine (``python -m bench`` lists the main
ones). The harness they and the tests share (in-process ComfyUI, model builders) is in devtools/."""
