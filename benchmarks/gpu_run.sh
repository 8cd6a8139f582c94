#!/usr/bin/env bash
# One prepared run on a GPU machine with JAX but no TensorFlow and no network (docs/benchmarks.md, "GPU
# through Keras on JAX"): the project's 3-optimizer sweep against bare Keras (benchmarks/gpu_sweep.py),
# then benchmarks/gpu_jax.py. Each part has its own time limit, so one failure keeps the others' results.
#
#   OUT=results/ bash benchmarks/gpu_run.sh [PROJECT_DIR] [WHEELS_DIR]
#
# PROJECT_DIR: a copy of the project to run (default: this checkout) with data/mnist.npz in it.
# WHEELS_DIR: wheels of what the machine lacks (keras, namex, optree, hydra-core, omegaconf,
#   antlr4-python3-runtime, mlflow-skinny and its needs, SQLAlchemy + alembic + Mako for the SQLite store),
#   installed with --no-deps into /tmp/site, which goes first on PYTHONPATH. Leave it out where they are installed.
# Environment: PYTHON (default python3), ROUNDS (2), SWEEP_EPOCHS/SWEEP_LIMIT (full run by default;
#   small values only to rehearse), JAX_EPOCHS (4), and the limits SWEEP_TIMEOUT (290 s), SIDE_TIMEOUT
#   (130 s per side of a round), JAX_TIMEOUT (120 s).
# Writes into $OUT: run.log (everything), sweep.json + sweep.log, gpu_jax.json, gpu_jax.log.
set -x
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax GIT_PYTHON_REFRESH=quiet
OUT=${OUT:?set OUT to a folder for the results}
mkdir -p "$OUT"
PROJECT=$(cd "${1:-.}" && pwd)
WHEELS=${2:-}
PYTHON=${PYTHON:-python3}
exec > >(tee -a "$OUT/run.log") 2>&1

date -u
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
"$PYTHON" --version
"$PYTHON" -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda.*|numpy|ml.dtypes|h5py|protobuf|typing.extensions|rich|absl-py|psutil|pyyaml|click|cloudpickle) ' || true
if [ -n "$WHEELS" ]; then
    SITE=${SITE:-/tmp/site}
    timeout 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl || echo "PART FAILED: installing the wheels (rc $?)"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
cd "$PROJECT" || exit 1
timeout 90 "$PYTHON" -c '
import jax, keras, mlflow, hydra, omegaconf, sqlalchemy, alembic
import src.train
print("jax", jax.__version__, jax.devices(), "| keras", keras.__version__, keras.backend.backend(),
      "| mlflow", mlflow.__version__, "| hydra", hydra.__version__, "| sqlalchemy", sqlalchemy.__version__)
' || echo "PART FAILED: imports (rc $?)"

SWEEP_ARGS=(--rounds "${ROUNDS:-2}" --timeout "${SIDE_TIMEOUT:-130}" --store-dir /tmp/gpu_sweep)
[ -n "${SWEEP_EPOCHS:-}" ] && SWEEP_ARGS+=(--epochs "$SWEEP_EPOCHS")
[ -n "${SWEEP_LIMIT:-}" ] && SWEEP_ARGS+=(--limit "$SWEEP_LIMIT")
time timeout "${SWEEP_TIMEOUT:-290}" "$PYTHON" benchmarks/gpu_sweep.py --out "$OUT/sweep.json" "${SWEEP_ARGS[@]}" \
    || echo "PART FAILED: gpu_sweep.py (rc $?)"
cat "$OUT/sweep.json" 2>/dev/null

time timeout "${JAX_TIMEOUT:-120}" "$PYTHON" benchmarks/gpu_jax.py --mnist data/mnist.npz --epochs "${JAX_EPOCHS:-4}" \
    --json "$OUT/gpu_jax.json" 2>&1 | tee "$OUT/gpu_jax.log"
echo "gpu_jax.py rc ${PIPESTATUS[0]}"
nvidia-smi --query-gpu=name,temperature.gpu,clocks.sm --format=csv || true
date -u
