"""Preprocessor cases shared by the native test (test_shaders.py) and the browser's (test_browser.py): files
by name, then (kernel, defines, consts) -> the text kept, or the error's message."""

FILES = {
    "chain.wgsl": "a\n//!if A\nA\n//!elif B\nB\n//!elif !C\nnot C\n//!else\nelse\n//!endif\nz\n",
    "nested.wgsl": "//!if A\n//!if B\nAB\n//!else\nA not B\n//!endif\n//!elif B\nB only\n//!endif\n",
    "twice.wgsl": "//!include part.wgsl\n//!include part.wgsl\n//!const N\nend\n",
    "part.wgsl": "//!if !A\nnot A\n//!endif\npart\n",
    "open.wgsl": "x\n//!include open_part.wgsl\n",
    "open_part.wgsl": "y\n//!if A\nA\n",
    "stray.wgsl": "x\n//!elif A\n",
    "unasked.wgsl": "x\n",
}

CASES = [   # (kernel, defines, consts, the kept lines or "error: ..." )
    ("chain", [], {}, "a\nnot C\nz\n"),
    ("chain", ["A", "B"], {}, "a\nA\nz\n"),
    ("chain", ["B"], {}, "a\nB\nz\n"),
    ("chain", ["C"], {}, "a\nelse\nz\n"),
    ("nested", ["A"], {}, "A not B\n"),
    ("nested", ["A", "B"], {}, "AB\n"),
    ("nested", ["B"], {}, "B only\n"),
    ("nested", [], {}, "\n"),
    ("twice", [], {"N": 7}, "not A\npart\nconst N: u32 = 7u;\nend\n"),
    ("twice", [], {"N": 0}, "error: twice.wgsl:3: constant N needs a positive integer from the plan, got 0"),
    ("open", [], {}, "error: open_part.wgsl:2: unterminated //!if"),
    ("stray", [], {}, "error: stray.wgsl:2: //!elif without //!if"),
    ("unasked", [], {"M": 1}, "error: unasked.wgsl declares no constant ['M']"),
]
