"""Development helpers shared by the tests, benchmarks and scripts of the Binding Guidance pack (never shipped).

- ``comfy_env``: makes a real headless ComfyUI and the pack (as ``binding_guidance``) importable;
- ``tiny_models``: tiny random-weight checkpoints built with ComfyUI's own classes;
- ``token_layouts``: parser-output stand-ins and token tables/layouts from a real tokenizer;
- ``guided_runs``: the spec's example prompt and guided/stock sampling runs on a tiny model;
- ``workflow_tools``: UI ↔ API workflow conversion checked against node schemas.

``scripts/setup_env.sh`` installs it into the venv (``pip install -e tools``), so it imports as
``devkit`` from anywhere; the pack root itself never goes on ``sys.path`` (its ``nodes/`` would shadow ComfyUI's).
"""
