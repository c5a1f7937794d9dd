"""Write a .npy file whose length is not known in advance, a block at a time (bounded memory).

numpy pads a .npy header so that the first dimension can grow to 21 digits without moving the data; the header is
written for zero rows first and rewritten in place with the final row count on close.
"""
from __future__ import annotations

import numpy as np
from numpy.lib import format as npy_format


class NpyAppender:
    """Appends rows of one dtype (and row shape) to `path`; `close()` writes the final shape."""

    def __init__(self, path: str, dtype, row_shape: tuple[int, ...] = ()):
        self.path, self.dtype, self.row_shape, self.rows = path, np.dtype(dtype), tuple(row_shape), 0
        self._file = open(path, "wb")
        self._header_size = self._write_header()

    def _write_header(self) -> int:
        self._file.seek(0)
        npy_format.write_array_header_1_0(self._file, {"descr": npy_format.dtype_to_descr(self.dtype),
                                                       "fortran_order": False,
                                                       "shape": (self.rows, *self.row_shape)})
        return self._file.tell()

    def append(self, values) -> None:
        block = np.ascontiguousarray(values, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path}: rows of shape {block.shape[1:]} appended to rows of shape {self.row_shape}")
        self._file.write(block.tobytes())
        self.rows += len(block)

    def close(self) -> None:
        if self._file.closed:
            return
        end = self._file.tell()
        if self._write_header() != self._header_size:  # cannot happen below 10**21 rows; never corrupt silently
            raise RuntimeError(f"{self.path}: the .npy header changed size")
        self._file.seek(end)
        self._file.close()

    def __enter__(self) -> "NpyAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
