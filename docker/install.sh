#!/bin/sh
# Install a built textft wheel, with the extras a deployment needs, into the Python that runs it.
# Both images run this script, and so does the wheel-install test (tests/test_wheel_install.py):
# what the test proves is what the images do.
#
#   PYTHON=/path/to/python sh docker/install.sh dist/textft-0.1.0-py3-none-any.whl
#
# torch: where the Python already has it (the CUDA image's base), that build stays, and pip may not
# replace it: a dependency that wanted another torch would otherwise pull a multi-GB CUDA wheel of
# another CUDA version. Elsewhere TORCH_SPEC is installed first, from TORCH_INDEX_URL when set (the
# CPU image names PyTorch's CPU index, where torch==2.13.0 is the CPU build).
set -eu

wheel=${1:?usage: install.sh WHEEL}
python=${PYTHON:-python3}
extras=${TEXTFT_EXTRAS:-service,onnx,offline}

if ! "$python" -c "import torch" 2>/dev/null; then
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        "$python" -m pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "${TORCH_SPEC:-torch==2.13.0}"
    else
        "$python" -m pip install --no-cache-dir "${TORCH_SPEC:-torch==2.13.0}"
    fi
fi
pinned=$(mktemp)
"$python" -c "import torch; print('torch==' + torch.__version__)" > "$pinned"
"$python" -m pip install --no-cache-dir --constraint "$pinned" "${wheel}[${extras}]"
rm -f "$pinned"

# Fail here, not at the first request: the presets, the service and ONNX Runtime must load.
"$python" -m textft configs path quickstart > /dev/null
case ",$extras," in *,service,*) "$python" -c "import textft.service.app" ;; esac
case ",$extras," in *,onnx,*) "$python" -c "import onnxruntime" ;; esac
"$python" -c "import textft, torch; print(f'installed textft {textft.__version__} [$extras] with torch {torch.__version__}')"
