"""The training side (torch): data -> masks -> network -> train -> checkpoint -> calibrate/evaluate -> export.

It may import ``runtime`` (the export contract, the vote, test-time augmentation); the runtime never imports it.
"""
