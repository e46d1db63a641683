"""CPU per 480 x 640 RGB frame of the step the raw model's contract changed (issue 24): tritonclient's
packing of the inputs (client) and PyTriton's tensor-store serialise, copy and read back (stub -> serve), for
a UINT8 [1, H, W, 3] tensor (before) and one BYTES element with `size` (after). Both must give back the
frame exactly. The python backend's own unpacking of a BYTES tensor in the stub is not included.

Usage:
    python scripts/bench_raw_wire.py
"""

import time

import numpy as np
import tritonclient.grpc as grpcclient
from pytriton.proxy.data import (
    deserialize_numpy_with_struct_header as de,
)
from pytriton.proxy.data import (
    serialize_numpy_with_struct_header as ser,
)

image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
shm = bytearray(2 * image.nbytes)


def store(tensor: np.ndarray) -> np.ndarray:
    """What PyTriton's TensorStore put and get do to a tensor, without the shared-memory block bookkeeping."""
    header, data = ser(tensor)
    data = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    shm[: data.nbytes] = data
    return de([header, memoryview(shm)[: data.nbytes]])


def old() -> np.ndarray:
    item = grpcclient.InferInput("pixels", [1, 480, 640, 3], "UINT8")
    item.set_data_from_numpy(image[None])
    return store(image[None])[0]


def new() -> np.ndarray:
    blob = np.array([[image.tobytes()]], dtype=object)
    item = grpcclient.InferInput("pixels", [1, 1], "BYTES")
    item.set_data_from_numpy(blob)
    size = grpcclient.InferInput("size", [1, 3], "INT32")
    size.set_data_from_numpy(np.array([image.shape], np.int32))
    stored = store(blob)  # the stub hands the BYTES tensor on as an object array
    return np.frombuffer(stored[0, 0], np.uint8).reshape(480, 640, 3)


assert np.array_equal(old(), image) and np.array_equal(new(), image)
for _repeat in range(3):
    for name, fn in (("uint8 tensor", old), ("bytes + size", new)):
        t = time.process_time()
        for _ in range(200):
            fn()
        print(f"{name}: {(time.process_time() - t) / 200 * 1e3:.3f} ms CPU per frame", flush=True)
