"""The record offsets and constants gpuos_client.cupti relies on, against a real cupti_activity.h.

cupti.py reads activity records through ctypes at fixed offsets (kind @0, start @16, end @24).
This test compiles ``offsetof`` for every kernel, memcpy and memset record version the installed
CUDA toolkit's headers define and compares.  It needs a toolkit's include directory (any
/usr/local/cuda*/include with cupti.h, or $CUDA_HOME/include) and a C compiler; without them it
skips and says which is missing.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from gpuos_client import cupti

#: Record structs cupti.py may meet, and the ones where the offsets differ (never emitted now).
CURRENT = [f"CUpti_ActivityKernel{i}" for i in range(3, 11)] + [
    "CUpti_ActivityMemcpy",
    *(f"CUpti_ActivityMemcpy{i}" for i in range(3, 7)),
    "CUpti_ActivityMemset",
    *(f"CUpti_ActivityMemset{i}" for i in range(2, 5)),
]


def _include_dir() -> str | None:
    roots = [os.environ.get("CUDA_HOME", ""), *sorted(glob.glob("/usr/local/cuda*"), reverse=True)]
    for r in roots:
        if r and os.path.exists(os.path.join(r, "include", "cupti.h")):
            return os.path.join(r, "include")
    return None


def test_record_offsets_and_constants_match_the_installed_header(tmp_path):
    inc = _include_dir()
    cc = shutil.which("cc") or shutil.which("gcc")
    if inc is None or cc is None:
        pytest.skip(f"needs a CUDA toolkit's cupti.h ({'found' if inc else 'none'}) and a C compiler ({cc or 'none'})")
    header = "".join(p.read_text() for p in Path(inc).glob("cupti_activity*.h"))
    structs = [s for s in CURRENT if re.search(rf"}}\s*{s}\s*;", header)]
    assert "CUpti_ActivityKernel4" in structs and "CUpti_ActivityMemset3" in structs, structs
    lines = "\n".join(
        f'printf("{s} %zu %zu %zu\\n", offsetof({s}, kind), offsetof({s}, start), offsetof({s}, end));' for s in structs
    )
    src = tmp_path / "off.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <cupti.h>\nint main(void){\n"
        + lines
        + '\nprintf("K %d %d %d %d %d\\n", CUPTI_ACTIVITY_KIND_MEMCPY, CUPTI_ACTIVITY_KIND_MEMSET,'
        " CUPTI_ACTIVITY_KIND_KERNEL, CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ERROR_MAX_LIMIT_REACHED);\n"
        "return 0;}\n"
    )
    exe = tmp_path / "off"
    build = subprocess.run([cc, f"-I{inc}", str(src), "-o", str(exe)], capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr[-2000:]
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30).stdout.splitlines()
    print(f"{inc}: {len(structs)} record structs checked")
    got = {ln.split()[0]: tuple(map(int, ln.split()[1:])) for ln in out}
    for s in structs:
        assert got[s] == (0, cupti.START_OFFSET, cupti.END_OFFSET), (s, got[s])
    assert got["K"] == (
        cupti.KIND_MEMCPY,
        cupti.KIND_MEMSET,
        cupti.KIND_KERNEL,
        cupti.KIND_CONCURRENT_KERNEL,
        cupti.CUPTI_ERROR_MAX_LIMIT_REACHED,
    )
