"""The workload-class vocabulary: the one place that defines it.

A workload class says what *kind* of work a process (or one phase of it) is
doing, so that the OS side can treat like work alike.  Free strings are
accepted by ``workload_class()``, but every integration in this package
(``gpuos_client.torch``, ``gpuos_client.hf``, ``gpuos-run``) uses only the
names below, and uses them the same way:

=====================  ==========================================  =================================
class                  meaning                                     set by the integrations on
=====================  ==========================================  =================================
inference.prefill      prompt processing: large GEMMs, compute     a forward with an empty KV cache
inference.decode       token generation: small kernels, memory     a forward that extends a KV cache
inference.batch        offline batched inference, evaluation       eval forwards, Trainer.evaluate
training.step          forward/backward/optimizer of a step        train forwards, backward, step
training.data          data loading and preprocessing              DataLoader waits and fetches
training.checkpoint    saving state: I/O bound                     Trainer checkpoint saves
batch.io               bulk reads/writes                           (by hand only)
batch.compute          bulk compute without latency needs          (by hand only)
interactive            latency-sensitive, user-facing              (by hand only)
idle                   holding resources, doing nothing            (by hand only)
=====================  ==========================================  =================================

A class given explicitly (``instrument(model, workload_class=...)``,
``gpuos-run --class ...``) always wins over the one an integration would pick.
This module imports nothing: the daemon and the launcher can read it cheaply.
"""

from __future__ import annotations

from typing import Final

INFERENCE_PREFILL: Final = "inference.prefill"
INFERENCE_DECODE: Final = "inference.decode"
INFERENCE_BATCH: Final = "inference.batch"
TRAINING_STEP: Final = "training.step"
TRAINING_DATA: Final = "training.data"
TRAINING_CHECKPOINT: Final = "training.checkpoint"
BATCH_IO: Final = "batch.io"
BATCH_COMPUTE: Final = "batch.compute"
INTERACTIVE: Final = "interactive"
IDLE: Final = "idle"

#: The documented vocabulary of workload classes; free strings are accepted too.
CLASSES: Final = frozenset(
    {
        INFERENCE_PREFILL,
        INFERENCE_DECODE,
        INFERENCE_BATCH,
        TRAINING_STEP,
        TRAINING_DATA,
        TRAINING_CHECKPOINT,
        BATCH_IO,
        BATCH_COMPUTE,
        INTERACTIVE,
        IDLE,
    }
)

#: The class each phase name of the integrations carries (same names everywhere).
PHASE_CLASSES: Final[dict[str, str]] = {
    "prefill": INFERENCE_PREFILL,
    "decode": INFERENCE_DECODE,
    "generate": INFERENCE_DECODE,
    "eval": INFERENCE_BATCH,
    "forward": TRAINING_STEP,
    "backward": TRAINING_STEP,
    "optimizer.step": TRAINING_STEP,
    "train.step": TRAINING_STEP,
    "data": TRAINING_DATA,
    "data.fetch": TRAINING_DATA,
    "checkpoint": TRAINING_CHECKPOINT,
}
