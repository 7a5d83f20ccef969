"""amf-mtl: multi-task atypical mitotic figure classification.

Training side (needs torch): data -> masks -> network -> train -> checkpoint -> export.
Runtime side (numpy + onnxruntime + SimpleITK only): stack -> ensemble -> grand_challenge.
"""
