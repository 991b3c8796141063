"""JSON Schemas of what webmoe reads from outside, shared by the native engine and the browser."""
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
