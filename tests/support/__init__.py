"""What the tests share besides fixtures (those live in tests/conftest.py), one idea a module:

- paths: the checkout, ../shared/data, scikit-learn's two photos
- server: a real `alexnet-serve` process (start, stop, a free port)
- images: synthetic test images and multipart `files` fields
- settings: `cpu_settings(root, **overrides)`, the one way tests build a CPU-only `Settings`
- app: the service in process (a loader reusing a loaded session, a raw ASGI POST, `classify`, version clones)
- python: a fresh Python without some packages (as on the GPU machine)
- gpu: whether ONNX Runtime can really run on CUDA here
- containers: readers of the Dockerfile and compose files
- browser: a headless Chromium under Selenium

Imported as ``from support.server import ...`` (pytest puts tests/ on sys.path).
"""
