"""Without onnxconverter-common, the FP16 cast is one clear error with the install hint, not a traceback."""

import sys

import pytest

from sparsecc.errors import BackendUnavailableError


def test_to_fp16_without_onnxconverter_common_says_what_to_install(monkeypatch):
    from sparsecc.passes import to_fp16

    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)  # import fails as if not installed
    with pytest.raises(BackendUnavailableError) as err:
        to_fp16.convert_to_fp16(None)
    assert "onnxconverter-common" in str(err.value) and "sparsecc[tensorrt]" in err.value.fix
