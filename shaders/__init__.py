"""The WGSL kernels shared by the native engine and the browser. See README.md in this folder."""
from pathlib import Path

SHADER_DIR = Path(__file__).resolve().parent
