"""Build the optional C hot path of the client (gpuos_client._cphase).

Everything else is declared in pyproject.toml.  The extension is optional:
where no C compiler or Python headers exist, the build goes on without it and
the client uses its pure-Python twin (gpuos_client/_phase_py.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gpuos_client._cphase",
            ["gpuos_client/_cphase.c"],
            optional=True,
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-missing-field-initializers"],
        )
    ]
)
