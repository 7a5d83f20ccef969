"""The ``amf`` console command: one parser for every step, torch-free until a command runs (cli/main.py)."""
