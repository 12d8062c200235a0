"""Build the optional C parts: the client's hot path (gpuos_client._cphase), the
daemon's per-event validation of the protocol (gpuos_client._cproto) and the CUPTI
buffer walk of the busy-time tracer (gpuos_client._cbusy).

Everything else is declared in pyproject.toml.  Both extensions are optional:
where no C compiler or Python headers exist, the build goes on without them and
the pure-Python twins are used (gpuos_client/_phase_py.py, protocol.check_event,
cupti.CuptiTracer._parse_py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gpuos_client._cphase",
            ["gpuos_client/_cphase.c"],
            optional=True,
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-missing-field-initializers"],
        ),
        Extension(
            "gpuos_client._cproto",
            ["gpuos_client/_cproto.c"],
            optional=True,
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-missing-field-initializers"],
        ),
        Extension(
            "gpuos_client._cbusy",
            ["gpuos_client/_cbusy.c"],
            optional=True,
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-missing-field-initializers"],
        ),
    ]
)
