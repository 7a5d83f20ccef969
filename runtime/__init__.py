"""The runtime that ships in the container image: numpy, onnxruntime and SimpleITK only.

It reads a Grand Challenge stack, runs the exported fold ensemble and votes. It never imports torch or the
``training`` package (test/runtime/test_imports.py checks it); ``training`` imports from here.
"""
