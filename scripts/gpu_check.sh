#!/usr/bin/env bash
# scripts/gpu_check.sh: every GPU path of bnwvad in one command, within a time budget, for the
# day a machine with an NVIDIA GPU is lent (the TensorRT builder, the CUDA / TensorRT runners and
# the benchmark's GPU rows have never run). Run it from anywhere; it works in the repository root.
#
#   bash scripts/gpu_check.sh                 # set up (or, offline, use the image), check everything
#   bash scripts/gpu_check.sh --skip-setup    # use the .venv that is there (never reinstall it)
#   bash scripts/gpu_check.sh --dry-run       # print the commands and the time plan, run nothing
#                                             # (but the 5-second registry probe of --mode auto)
#   bash scripts/gpu_check.sh --offline       # = --mode image: no registry, use the machine's python3
#   bash scripts/gpu_check.sh --budget 300    # all steps within 300 s (default 560)
#   make gpu-check [GPU_CHECK_ARGS=--offline] # the same as the first line
#
# Modes (--mode auto|setup|image, GPU_CHECK_MODE; default auto):
#   setup  a package registry answers: step 1 is `make setup RUNTIME=gpu` into $VENV.
#   image  no registry (the lent nvidia-h200 machine: nothing can be fetched there): step 1 uses
#          the machine's own python3 (the first of $GPU_CHECK_PYTHON, python3,
#          /opt/torch/.venv/bin/python3 whose torch sees CUDA), makes a venv over it
#          ($GPU_CHECK_WORK/image_venv, no pip of its own; a .pth adds the image's site-packages)
#          and installs this checkout into it editable, without dependencies or an index
#          (pip install --no-deps --no-build-isolation --no-index -e .; if the image's setuptools
#          cannot build that, an import hook from setup.cfg's package_dir plus the console
#          scripts written by hand). What needs a package the image lacks (tensorrt,
#          onnxruntime-gpu: their wheels are also too big to carry) is SKIPPED, not failed:
#          "not available on this machine's image (no registry to install them)"; the rest runs:
#          the gpu tests that need only torch CUDA, the ONNX exports, the bench's torch_cuda
#          against torch_eager / ort_fp32 (ONNX Runtime CPU), and whatever GPU provider the
#          image's onnxruntime has.
#   auto   PIP_NO_INDEX set, or `pip download six` (5 s timeout, no retries) fails: image;
#          else setup. --skip-setup without --mode means setup (use $VENV as it is).
#
# Shared data (reference weights, dataset lists): $BNWVAD_SHARED, else ./shared in the checkout
# (it travels to the lent machine), else ../shared beside it (which does not travel). For the
# lent machine, before the call, in the repository root here (about 33 MB of the 64 MiB a call
# carries; train_step_xd_B4x2_T40.npz, 43 MB, does not fit: its cuda test is then deselected):
#   grep -qx '/shared/' .git/info/exclude 2>/dev/null || echo /shared/ >>.git/info/exclude
#   mkdir -p shared/reference && cp -r ../shared/datasets shared/ &&
#   cp ../shared/reference/{official_state_dict.pkl,infer_*.npz,README.md} shared/reference/
# (shared/ travels even though ignored; ignoring it keeps it out of commits.) Then run there
#   bash scripts/gpu_check.sh --budget 420    # timeout_s 480: leaves device time to rerun once
# and read $OUT/gpu_check.md (the tool's $OUT is where the report goes; 8 files, its limit).
#
# Steps (each runs even when an earlier one failed; each under its own `timeout`):
#   1 setup    mode setup: make setup RUNTIME=gpu: .venv with torch from PyPI (the CUDA build),
#              onnxruntime-gpu and the tensorrt extra (GPU_CHECK_MAKE_ARGS adds make variables,
#              e.g. 'TORCH= VENV_ARGS=--system-site-packages' to reuse a machine's own CUDA torch)
#              mode image: the registry probe, the image's python3, the venv over it (see Modes)
#   2 env      nvidia-smi; python / torch / onnxruntime / tensorrt versions;
#              onnxruntime.get_available_providers(); a toy graph really run on the CUDA and
#              TensorRT providers; a TensorRT builder created (image mode: those of them there)
#   3 tests    python -m pytest -m gpu (passes only if they ran: skips for want of a GPU fail it;
#              image mode deselects the tests of what the image lacks, each named in the report)
#   4 engines  the published XD-Violence weights (or, without them, a seeded random paper-size
#              checkpoint) exported fp32 and fp16 with bnwvad-export, then `bnwvad-export engine`
#              with a profile up to N,C,T = 1,10,T_MAX, T_MAX the longest XD-Violence / UCF-Crime
#              test video (test_snippets.csv, floor 6749), each verified against PyTorch; both
#              engines then run one video of T = T_MAX (C = the model's crops, 5 for XD) against
#              PyTorch on the GPU (image mode without tensorrt: the exports only, then SKIP)
#   5 bench    bench/run.py --quick --backends ort_fp32,torch_cuda,ort_cuda_fp32,ort_cuda_fp16,
#              ort_trt_fp32,ort_trt_fp16,trt_fp32,trt_fp16 (passes only if every one of them was
#              measured within its tolerance; ort_fp32 is the run's headline, without which
#              bench/run.py exits 1 whatever the GPU rows did; image mode: only the backends
#              whose packages the image has)
# Then $OUT/gpu_check.md sums up each step (status, seconds, key lines); the logs lie beside it.
# Exit status: 0 when every step passed (or was skipped on request or for want of a package
# in image mode), 1 otherwise, 2 usage.
#
# Outputs: $OUT if set, else <repo>/gpu_check_out: gpu_check.md, setup.log, env.log, tests.log,
# engines.log, bench.log, bench_report.md, bench_report.json (8 files). Large files (graphs,
# engines, the bench cache, the demo set, the image-mode venv) go to $GPU_CHECK_WORK (default
# /tmp/bnwvad_gpu_check).
#
# Environment: VENV (.venv, relative to the repository root; mode setup), OUT, GPU_CHECK_WORK,
# GPU_CHECK_BUDGET (seconds, default 560; the device tool allows 600 a command),
# GPU_CHECK_DRY_RUN=1, GPU_CHECK_SKIP_SETUP=1, GPU_CHECK_MODE (auto, setup, image),
# GPU_CHECK_PYTHON (image mode: the python to use first), GPU_CHECK_IMAGE_VENV (image mode's venv,
# default $GPU_CHECK_WORK/image_venv), GPU_CHECK_IMAGE_INSTALL (pip, the default, or hook: skip
# pip and use the import hook), PYTHON (the python of the registry probe and of make; python3),
# GPU_CHECK_FORCE=1 (run steps 3-5 even when no GPU is visible; they then fail one by one),
# GPU_CHECK_MAKE_ARGS, GPU_CHECK_BENCH_ARGS (extra bench/run.py options, e.g. --no-memory),
# GPU_CHECK_MIN_T (floor of T_MAX, default 6749), GPU_CHECK_MAX_N (N of the engine profile, 1),
# BNWVAD_SHARED (the shared folder, see above).
set -u
set -o pipefail

usage() { sed -n '2,/^set -u/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; }

DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
SKIP_SETUP=${GPU_CHECK_SKIP_SETUP:-0}
FORCE=${GPU_CHECK_FORCE:-0}
BUDGET=${GPU_CHECK_BUDGET:-560}
MODE=${GPU_CHECK_MODE:-auto}
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --skip-setup) SKIP_SETUP=1 ;;
        --force) FORCE=1 ;;
        --offline|--image) MODE=image ;;
        --mode) shift; MODE=${1:-} ;;
        --mode=*) MODE=${1#--mode=} ;;
        --budget) shift; BUDGET=${1:-} ;;
        --budget=*) BUDGET=${1#--budget=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check.sh: --budget wants whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac
case "$MODE" in auto|setup|image) ;; *) echo "gpu_check.sh: --mode wants auto, setup or image, got '$MODE'" >&2; exit 2 ;; esac

OUT=${OUT:-}
WORK=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/bnwvad_gpu_check}
case "$OUT" in ''|/*) ;; *) OUT=$PWD/$OUT ;; esac          # relative to where it was called
case "$WORK" in /*) ;; *) WORK=$PWD/$WORK ;; esac
case "${BNWVAD_SHARED:-}" in ''|/*) ;; *) BNWVAD_SHARED=$PWD/$BNWVAD_SHARED ;; esac
IMAGE_VENV=${GPU_CHECK_IMAGE_VENV:-}
case "$IMAGE_VENV" in ''|/*) ;; *) IMAGE_VENV=$PWD/$IMAGE_VENV ;; esac
VENV=${VENV:-.venv}                     # as for make: relative to the repository root
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
PY="$VENV/bin/python"
OUT=${OUT:-$REPO/gpu_check_out}
mkdir -p "$OUT" "$WORK" || exit 2
OUT=$(cd "$OUT" && pwd)
WORK=$(cd "$WORK" && pwd)
rm -f "$WORK"/notes_* "$OUT"/gpu_check.md "$OUT"/{setup,env,tests,engines,bench}.log "$OUT"/bench_report.*
if [ -n "${BNWVAD_SHARED:-}" ]; then SHARED_FROM="\$BNWVAD_SHARED"
elif [ -d shared/reference ] || [ -d shared/datasets ]; then BNWVAD_SHARED=$REPO/shared; SHARED_FROM="./shared in the checkout"
else BNWVAD_SHARED=$(cd .. && pwd)/shared; SHARED_FROM="../shared beside the checkout"; fi
export BNWVAD_SHARED PYTHONUNBUFFERED=1
MIN_T=${GPU_CHECK_MIN_T:-6749}
MAX_N=${GPU_CHECK_MAX_N:-1}
BENCH_BACKENDS=ort_fp32,torch_cuda,ort_cuda_fp32,ort_cuda_fp16,ort_trt_fp32,ort_trt_fp16,trt_fp32,trt_fp16
NOT_IN_IMAGE="not available on this machine's image (no registry to install them)"
# What the env probe found installed (image mode skips what is missing): tensorrt, the CUDA and
# TensorRT providers of onnxruntime. Unknown (-) until the probe ran.
HAVE_TRT=- HAVE_ORT_CUDA=- HAVE_ORT_TRT=-
MODE_WHY=""                             # why this mode (the registry probe's answer)
START=$SECONDS
REPORT_RESERVE=15                       # seconds kept for the report
DRY_CLOCK=0                             # a dry run counts each step as using all its time
STEPS=(setup env tests engines bench)
declare -A WEIGHT=([setup]=30 [env]=5 [tests]=15 [engines]=22 [bench]=28)
declare -A TITLE=([setup]="make setup RUNTIME=gpu (+ tensorrt extra)" [env]="GPU, versions, providers"
                  [tests]="pytest -m gpu" [engines]="TensorRT engines fp32 + fp16 (published XD model)"
                  [bench]="bench/run.py --quick, GPU backends")
declare -A STATUS SECS LIMIT

say() { printf '[gpu_check %4ds] %s\n' $((SECONDS - START)) "$*"; }
# note STEP TEXT: a key line of the step for the report (also printed).
note() { local s=$1; shift; printf '%s\n' "$*" >>"$WORK/notes_$s"; say "  $s: $*"; }
# The seconds step $1 may take: its share of what is left, by weight among the steps not yet run.
share_of() {
    local step=$1 rest=0 seen=0 s
    for s in "${STEPS[@]}"; do
        [ "$s" = "$step" ] && seen=1
        [ $seen = 1 ] && rest=$((rest + WEIGHT[$s]))
    done
    local left=$((BUDGET - (SECONDS - START) - DRY_CLOCK - REPORT_RESERVE))
    local t=$((left * WEIGHT[$step] / rest))
    [ $t -lt 5 ] && t=5
    echo $t
}
# run LOG TIMEOUT CMD...: the command under `timeout` (its whole process group is signalled),
# output appended to LOG; in a dry run only printed. Returns the command's status (124: timed out).
run() {
    local log=$1 t=$2; shift 2
    printf '+ timeout %s %s\n' "$t" "$*" >>"$log"
    if [ "$DRY_RUN" = 1 ]; then printf '  would run (timeout %3ss): %s\n' "$t" "$*"; return 0; fi
    if [ "$t" -le 0 ]; then echo "no time left in the budget: not run" >>"$log"; return 124; fi
    timeout --kill-after=10 "$t" "$@" >>"$log" 2>&1
    local rc=$?
    [ $rc = 124 ] || [ $rc = 137 ] && echo "!! timed out after ${t}s (exit $rc)" >>"$log"
    return $rc
}
# fail_lines STEP LOG [FROM]: what went wrong, as notes: the error lines of LOG from line FROM
# on (default 1), else its last 3 lines.
fail_lines() {
    local part errs
    part=$(tail -n +"${3:-1}" "$2" | grep -v -e '^+ timeout ' -e '^[[:space:]]*$')
    errs=$(printf '%s\n' "$part" | grep -iE 'error|exception|failed|traceback|timed out|not found' | tail -n 3)
    [ -z "$errs" ] && errs=$(printf '%s\n' "$part" | tail -n 3)
    printf '%s\n' "$errs" | while IFS= read -r l; do [ -n "$l" ] && note "$1" "log: ${l:0:400}"; done
}
# what of the shared folder is there (the steps that need the rest skip or fall back)
shared_state() {
    local d=$BNWVAD_SHARED have=()
    [ -d "$d" ] || { echo absent; return; }
    [ -f "$d/reference/official_state_dict.pkl" ] && have+=("reference weights") || have+=("NO reference weights")
    [ -f "$d/reference/train_step_xd_B4x2_T40.npz" ] || have+=("no train_step reference")
    have+=("$(ls "$d"/datasets/*/test_snippets.csv 2>/dev/null | wc -l) test_snippets.csv")
    echo "present: $(printf '%s, ' "${have[@]}" | sed 's/, $//')"
}
lines_of() { echo $(($(wc -l <"$1") + 1)); }   # the number of the next line LOG will get
# time left for the step that started at $1 with limit $2
left_of() { local l=$(($2 - (SECONDS - $1))); [ $l -lt 0 ] && l=0; echo $l; }

# -- the mode -------------------------------------------------------------------------------
# registry_answers: whether pip fetches a tiny package (six) within seconds, as configured (index,
# proxies); its output goes to setup.log.
registry_answers() {
    local py=${PYTHON:-python3} d=$WORK/netprobe rc
    rm -rf "$d"
    printf '+ registry probe: %s -m pip download --no-deps six (pip timeout 5 s, no retries)\n' "$py" >>"$OUT/setup.log"
    timeout --kill-after=5 20 "$py" -m pip download -q --no-deps --no-cache-dir --disable-pip-version-check \
        --timeout 5 --retries 0 -d "$d" six >>"$OUT/setup.log" 2>&1
    rc=$?
    rm -rf "$d"
    echo "registry probe: exit $rc" >>"$OUT/setup.log"
    return $rc
}
decide_mode() {
    local t0=$SECONDS
    if [ "$MODE" != auto ]; then MODE_WHY="--mode $MODE given"; return; fi
    if [ "$SKIP_SETUP" = 1 ]; then MODE=setup; MODE_WHY="--skip-setup: $VENV as it is"; return; fi
    case "${PIP_NO_INDEX:-}" in
        ''|0|false|no|off) ;;
        *) MODE=image; MODE_WHY="PIP_NO_INDEX=$PIP_NO_INDEX: no registry"; return ;;
    esac
    if registry_answers; then MODE=setup; MODE_WHY="a package registry answers (pip download six, $((SECONDS - t0))s)"
    else MODE=image; MODE_WHY="no package registry answers (pip download six failed in $((SECONDS - t0))s, see setup.log)"; fi
}
# cap VALUE: a HAVE_* flag as 0/1 (unknown counts as missing)
cap() { [ "$1" = 1 ] && echo 1 || echo 0; }

# -- 1 setup, image mode --------------------------------------------------------------------
# The machine's own python (the one whose torch sees CUDA), a venv over it in $WORK (no pip of
# its own; a .pth adds the image's site-packages, which a venv made from a venv would not see),
# this checkout installed into it editable with no dependencies and no index, else an import
# hook generated from setup.cfg. Everything downstream then uses $VENV/bin as in mode setup.
IMAGE_PY=""
step_image() {
    local log=$OUT/setup.log t=$1 t0=$SECONDS
    touch "$log"
    note setup "mode image: $MODE_WHY"
    if [ "$SKIP_SETUP" = 1 ]; then
        note setup "skipped on request (--skip-setup): using $VENV as it is"
        STATUS[setup]=SKIP; return
    fi
    local cand path seen=" " first="" firstv="" out="" pick=""
    for cand in ${GPU_CHECK_PYTHON:-} python3 /opt/torch/.venv/bin/python3; do
        path=$(command -v "$cand" 2>/dev/null) || continue
        case "$seen" in *" $path "*) continue ;; esac
        seen="$seen$path "
        if [ "$DRY_RUN" = 1 ]; then
            printf '  would probe: %s -c "import torch; torch.cuda.is_available()" (the first whose torch sees CUDA)\n' "$path"
            [ -z "$first" ] && first=$path
            continue
        fi
        echo "+ $path -c 'import torch; ...'" >>"$log"
        [ "$(left_of $t0 "$t")" -gt 0 ] || { echo "no time left in the budget" >>"$log"; break; }
        out=$(timeout --kill-after=5 "$(left_of $t0 "$t")" "$path" -c \
            'import torch; print("TORCH", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())' \
            2>>"$log" | grep '^TORCH ')
        echo "python candidate $path: ${out:-no torch}" >>"$log"
        [ -z "$out" ] && continue
        [ -z "$first" ] && { first=$path; firstv=${out#TORCH }; }
        case "$out" in *" True") IMAGE_PY=$path; pick=${out#TORCH }; break ;; esac
    done
    if [ -z "$IMAGE_PY" ]; then IMAGE_PY=$first; pick=$firstv; fi
    [ -z "$IMAGE_PY" ] && [ "$DRY_RUN" = 1 ] && IMAGE_PY=python3
    if [ -z "$IMAGE_PY" ]; then
        note setup "no python with torch on this machine (tried:$seen)"; STATUS[setup]=FAIL; return
    fi
    [ "$DRY_RUN" = 1 ] || note setup "image python: $IMAGE_PY (torch $pick)"
    if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
        note setup "$VENV exists and is no venv: not removed (set GPU_CHECK_IMAGE_VENV)"; STATUS[setup]=FAIL; return
    fi
    run "$log" "$(left_of $t0 "$t")" rm -rf "$VENV"
    run "$log" "$(left_of $t0 "$t")" "$IMAGE_PY" -m venv --without-pip "$VENV"
    local rc=$?
    if [ $rc != 0 ]; then note setup "python -m venv failed (exit $rc)"; fail_lines setup "$log"; STATUS[setup]=FAIL; return; fi
    cat >"$WORK/image_site.py" <<'PYEOF'
"""The venv over the image's python sees the image's site-packages (a venv made from a venv
sees only its base's): a .pth in the venv that adds each of them as a site directory."""
import pathlib, site, sys
venv = pathlib.Path(sys.argv[1])
dirs = []
for p in [*site.getsitepackages(), *sys.path]:
    if p.rstrip("/").endswith(("site-packages", "dist-packages")) and pathlib.Path(p).is_dir() and p not in dirs:
        dirs.append(p)
sp = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
sp.mkdir(parents=True, exist_ok=True)
(sp / "_bnwvad_image_site.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in dirs))
print("the venv sees the image site-packages", dirs)
PYEOF
    run "$log" "$(left_of $t0 "$t")" "$IMAGE_PY" "$WORK/image_site.py" "$VENV"
    rc=$?
    if [ $rc != 0 ]; then note setup "could not add the image's site-packages (exit $rc)"; fail_lines setup "$log"; STATUS[setup]=FAIL; return; fi
    local how=${GPU_CHECK_IMAGE_INSTALL:-pip} from
    if [ "$how" = pip ]; then
        from=$(lines_of "$log")
        # no index, no dependencies, no build isolation: setuptools and wheel of the image build it
        run "$log" "$(left_of $t0 "$t")" env PIP_NO_INDEX=1 "$PY" -m pip install -q --no-deps --no-build-isolation \
            --no-index --ignore-installed --no-cache-dir --disable-pip-version-check -e "$REPO"
        rc=$?
        if [ $rc = 0 ]; then
            [ "$DRY_RUN" = 1 ] || note setup "bnwvad installed editable into $VENV (pip, no deps, no index)"
        else
            note setup "pip install -e . failed offline (exit $rc): the import hook instead"; fail_lines setup "$log" "$from"
            how=hook
        fi
    fi
    if [ "$how" = hook ] || [ "$DRY_RUN" = 1 ]; then
        [ "$DRY_RUN" = 1 ] && echo "  (if that fails: the import hook and console scripts from setup.cfg, as below)"
        cat >"$WORK/image_hook.py" <<'PYEOF'
"""Without a build: an import hook that maps setup.cfg's packages (package_dir) onto the
checkout, and the console scripts of setup.cfg written into the venv's bin."""
import configparser, pathlib, sys, sysconfig
repo, venv = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
cfg = configparser.ConfigParser()
cfg.read(repo / "setup.cfg")
opts = cfg["options"]
pkgdir = dict((k.strip(), v.strip()) for k, v in (ln.split("=", 1) for ln in opts.get("package_dir", "").splitlines() if "=" in ln))
mapping = {}
for name in opts.get("packages", "").replace(",", " ").split():
    parent = name.rpartition(".")[0]
    if name in pkgdir:
        mapping[name] = str(repo / pkgdir[name])
    elif not parent:
        mapping[name] = str(repo / pkgdir.get("", ".") / name)
site = pathlib.Path(sysconfig.get_paths()["purelib"])
(site / "_bnwvad_checkout_finder.py").write_text(f"""# scripts/gpu_check.sh, image mode: the packages of {repo} as setup.cfg maps them
import importlib.util
import sys

MAP = {mapping!r}


class BnwvadCheckoutFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        d = MAP.get(name)
        if d is None:
            return None
        return importlib.util.spec_from_file_location(name, d + "/__init__.py", submodule_search_locations=[d])

    @classmethod
    def invalidate_caches(cls):
        pass


if BnwvadCheckoutFinder.__name__ not in [getattr(f, "__name__", "") for f in sys.meta_path]:
    sys.meta_path.append(BnwvadCheckoutFinder)
""")
(site / "_bnwvad_checkout_finder.pth").write_text("import _bnwvad_checkout_finder\n")
for ln in cfg["options.entry_points"].get("console_scripts", "").splitlines():
    if "=" not in ln:
        continue
    name, target = (x.strip() for x in ln.split("=", 1))
    mod, _, attr = target.partition(":")
    exe = venv / "bin" / name
    exe.write_text(f"#!{venv}/bin/python\nimport importlib\nimport sys\n\nobj = importlib.import_module({mod!r})\n"
                   f"for a in {attr!r}.split(\".\"):\n    obj = getattr(obj, a)\nsys.exit(obj())\n")
    exe.chmod(0o755)
print("import hook for", mapping, "and the console scripts written")
PYEOF
        run "$log" "$(left_of $t0 "$t")" "$PY" "$WORK/image_hook.py" "$REPO" "$VENV"
        rc=$?
        if [ $rc != 0 ] && [ "$DRY_RUN" != 1 ]; then
            note setup "the import hook could not be written (exit $rc)"; fail_lines setup "$log"; STATUS[setup]=FAIL; return
        fi
        [ "$DRY_RUN" = 1 ] || note setup "bnwvad importable from the checkout through an import hook in $VENV"
    fi
    # bnwvad must import from the install (a script in $WORK: the checkout is not on sys.path)
    cat >"$WORK/image_check.py" <<'PYEOF'
import bnwvad, bnwvad.export, bnwvad.runtime, torch
print("IMPORTED bnwvad", bnwvad.__version__, "from", bnwvad.__file__, "| export", bnwvad.export.__file__,
      "| torch", torch.__version__, "cuda", torch.cuda.is_available())
PYEOF
    run "$log" "$(left_of $t0 "$t")" "$PY" "$WORK/image_check.py"
    rc=$?
    if [ "$DRY_RUN" = 1 ]; then STATUS[setup]=DRY; return; fi
    if [ $rc != 0 ]; then
        note setup "bnwvad does not import in $VENV (exit $rc)"; fail_lines setup "$log"; STATUS[setup]=FAIL; return
    fi
    grep '^IMPORTED ' "$log" | tail -n 1 | sed 's/^IMPORTED //' | while IFS= read -r l; do note setup "imports: $l"; done
    local s missing=""
    for s in $(sed -n '/^\[options.entry_points\]/,/^\[/{s/^[[:space:]]*\([a-z0-9_-]*\)[[:space:]]*=.*:.*/\1/p}' setup.cfg); do
        [ -x "$VENV/bin/$s" ] || missing="$missing $s"
    done
    [ -n "$missing" ] && note setup "WARNING: console scripts missing from $VENV/bin:$missing"
    "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|onnxruntime|onnxruntime-gpu|onnx|onnxscript|tensorrt[a-z0-9_-]*|numpy|setuptools) ' \
        | tr -s ' ' | while IFS= read -r l; do note setup "image has: $l"; done
    STATUS[setup]=PASS
}

# -- 1 setup --------------------------------------------------------------------------------
step_setup() {
    local log=$OUT/setup.log t=$1
    [ "$MODE" = image ] && { step_image "$t"; return; }
    touch "$log"                        # (it may hold the registry probe)
    note setup "mode setup: $MODE_WHY"
    if [ "$SKIP_SETUP" = 1 ]; then
        note setup "skipped on request (--skip-setup): using $VENV as it is"
        STATUS[setup]=SKIP; return
    fi
    if ! command -v make >/dev/null; then
        note setup "make is not installed"; STATUS[setup]=FAIL; return
    fi
    # Short network timeouts: where no registry answers, fail in seconds, not minutes.
    # shellcheck disable=SC2086  # GPU_CHECK_MAKE_ARGS is a list of make variables
    run "$log" "$t" env PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-30}" PIP_RETRIES="${PIP_RETRIES:-2}" \
        make setup RUNTIME=gpu VENV="$VENV" ${GPU_CHECK_MAKE_ARGS:-}
    local rc=$?
    if [ "$DRY_RUN" = 1 ]; then STATUS[setup]=DRY; return; fi
    if [ $rc = 0 ]; then
        STATUS[setup]=PASS
        note setup "make setup RUNTIME=gpu: ok"
        "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|onnxruntime|onnxruntime-gpu|onnx|tensorrt[a-z0-9_-]*|numpy) ' \
            | tr -s ' ' | while IFS= read -r l; do note setup "installed: $l"; done
        "$PY" -m pip list 2>/dev/null | grep -qiE '^onnxruntime ' && note setup "WARNING: the CPU onnxruntime is installed too"
    else
        STATUS[setup]=FAIL
        [ $rc = 124 ] || [ $rc = 137 ] && note setup "timed out after ${t}s"
        note setup "make setup RUNTIME=gpu failed (exit $rc):"
        fail_lines setup "$log"
    fi
}

# -- 2 env ----------------------------------------------------------------------------------
GPU_SEEN=0
step_env() {
    local log=$OUT/env.log t=$1 t0=$SECONDS
    : >"$log"
    if command -v nvidia-smi >/dev/null; then
        run "$log" 30 nvidia-smi
        local rc=$?
        run "$log" 15 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
        if [ "$DRY_RUN" != 1 ]; then
            if [ $rc = 0 ]; then
                GPU_SEEN=1
                grep -A20 '^+ timeout 15 nvidia-smi --query' "$log" | sed -n '2,5p' | while IFS= read -r l; do
                    note env "GPU: $l"; done
            else
                note env "nvidia-smi failed (exit $rc): no usable NVIDIA GPU / driver"
            fi
        fi
    else
        echo "nvidia-smi: not found" >>"$log"
        note env "nvidia-smi not found: no NVIDIA driver on this machine"
    fi
    if [ ! -x "$PY" ]; then
        note env "$PY missing: no environment to check ($([ "$MODE" = image ] && echo "step 1 makes it" || echo "run without --skip-setup"))"
        [ "$DRY_RUN" = 1 ] && STATUS[env]=DRY || STATUS[env]=FAIL
        return
    fi
    cat >"$WORK/env_probe.py" <<'PYEOF'
"""Versions, providers, and whether the GPU paths really run (a toy graph on each provider)."""
import importlib.util
import platform
import sys
from pathlib import Path

problems = []
# image mode (argv[2] == "image"): what the machine's image lacks and no registry can bring is
# reported as not available, not as a problem
image = len(sys.argv) > 2 and sys.argv[2] == "image"
NOT_IN_IMAGE = "not available on this machine's image (no registry to install them)"


def line(key, value):
    print(f"ENV {key}: {value}", flush=True)


line("python", f"{platform.python_version()} ({sys.executable})")
try:
    import torch
    line("torch", f"{torch.__version__}, CUDA {torch.version.cuda}, cuda available {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        line("torch device", f"{p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}")
    else:
        problems.append("torch sees no CUDA device")
except Exception as e:  # noqa: BLE001 - report whatever it is
    line("torch", f"import failed: {e}")
    problems.append("torch does not import")
try:
    import onnxruntime as ort
    providers = ort.get_available_providers()
    line("onnxruntime", f"{ort.__version__} ({ort.get_device()})")
    line("onnxruntime.get_available_providers()", providers)
    for need in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        if need not in providers:
            if image:
                line("NOT AVAILABLE", f"onnxruntime's {need} (onnxruntime-gpu): {NOT_IN_IMAGE}")
            else:
                problems.append(f"no {need} (onnxruntime-gpu missing?)")
except Exception as e:  # noqa: BLE001
    line("onnxruntime", f"import failed: {e}")
    problems.append("onnxruntime does not import")
    ort = None
    providers = []
try:
    import tensorrt as trt
    line("tensorrt", trt.__version__)
except ModuleNotFoundError as e:
    trt = None
    if image:
        line("NOT AVAILABLE", f"tensorrt: {NOT_IN_IMAGE}")
    else:
        line("tensorrt", f"import failed: {e}")
        problems.append("tensorrt does not import")
except Exception as e:  # noqa: BLE001
    line("tensorrt", f"import failed: {e}")
    problems.append("tensorrt does not import")
    trt = None
line("caps", f"tensorrt={int(trt is not None)} ort_cuda={int('CUDAExecutionProvider' in providers)} "
             f"ort_trt={int('TensorrtExecutionProvider' in providers)}")

# A toy graph of the export contract, really run on each GPU provider (ORT falls back to the
# CPU silently: the providers the session ended with tell).
if ort is not None:
    import numpy as np
    spec = importlib.util.spec_from_file_location("_toy_onnx", Path("tests/_toy_onnx.py"))
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    work = Path(sys.argv[1])
    path = toy.build_toy_onnx(work / "toy.onnx")
    feeds = {"features": np.random.default_rng(0).random((2, toy.TOY_CROPS, 16, toy.TOY_D), dtype=np.float32),
             "lengths": np.array([16, 9], np.int64)}
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    for name, prov in (("CUDA", [("CUDAExecutionProvider", {}), "CPUExecutionProvider"]),
                       ("TensorRT", [("TensorrtExecutionProvider", {"trt_engine_cache_enable": False}),
                                     "CUDAExecutionProvider", "CPUExecutionProvider"])):
        if image and prov[0][0] not in providers:
            continue                    # said above: not in the image
        try:
            s = ort.InferenceSession(str(path), providers=prov)
            out = s.run(None, feeds)
            err = max(float(np.abs(a - b).max()) for a, b in zip(out, ref))
            ok = s.get_providers()[0] == prov[0][0]
            line(f"toy graph on the {name} provider", f"session providers {s.get_providers()}, max |diff| vs CPU {err:.2e}"
                 + ("" if ok else "  <- FELL BACK"))
            if not ok:
                problems.append(f"the {name} provider did not take the graph (fell back to {s.get_providers()[0]})")
        except Exception as e:  # noqa: BLE001
            line(f"toy graph on the {name} provider", f"failed: {str(e).splitlines()[0][:300]}")
            problems.append(f"the {name} provider failed")
if trt is not None:
    try:
        b = trt.Builder(trt.Logger(trt.Logger.WARNING))
        line("tensorrt builder", f"created; platform_has_fast_fp16 {getattr(b, 'platform_has_fast_fp16', '?')}")
    except Exception as e:  # noqa: BLE001
        line("tensorrt builder", f"failed: {e}")
        problems.append("TensorRT cannot create a builder (no GPU?)")
for p in problems:
    line("PROBLEM", p)
sys.exit(1 if problems else 0)
PYEOF
    run "$log" "$(left_of $t0 "$t")" "$PY" "$WORK/env_probe.py" "$WORK" "$MODE"
    local rc=$?
    if [ "$DRY_RUN" = 1 ]; then
        [ "$MODE" = image ] && note env "dry run: tensorrt and onnxruntime-gpu taken as missing (as KINDS.md describes the image); a real run asks the probe"
        STATUS[env]=DRY; return
    fi
    grep '^ENV ' "$log" | grep -v '^ENV caps:' | sed 's/^ENV //' | while IFS= read -r l; do note env "${l:0:300}"; done
    local caps
    caps=$(grep '^ENV caps:' "$log" | tail -n 1)
    if [ -n "$caps" ]; then
        HAVE_TRT=$(echo "$caps" | sed -n 's/.*tensorrt=\([01]\).*/\1/p')
        HAVE_ORT_CUDA=$(echo "$caps" | sed -n 's/.*ort_cuda=\([01]\).*/\1/p')
        HAVE_ORT_TRT=$(echo "$caps" | sed -n 's/.*ort_trt=\([01]\).*/\1/p')
    elif [ "$MODE" = image ]; then
        note env "the probe did not say what is installed: tensorrt and onnxruntime-gpu taken as missing"
    fi
    # torch seeing CUDA counts as a GPU too (nvidia-smi can be missing from a container's PATH)
    grep -q '^ENV torch device:' "$log" && GPU_SEEN=1
    if [ $rc = 0 ] && [ $GPU_SEEN = 1 ]; then STATUS[env]=PASS
    else
        STATUS[env]=FAIL
        [ $rc = 124 ] || [ $rc = 137 ] && note env "the probe timed out"
        [ $rc != 0 ] && ! grep -q '^ENV ' "$log" && fail_lines env "$log"
    fi
}

no_gpu() {   # no_gpu STEP: fail the step at once when no GPU is visible (unless --force)
    if [ $GPU_SEEN = 0 ] && [ "$FORCE" != 1 ] && [ "$DRY_RUN" != 1 ]; then
        note "$1" "not run: no NVIDIA GPU visible (nvidia-smi / torch.cuda); --force runs it anyway"
        STATUS[$1]=FAIL
        return 0
    fi
    return 1
}

# -- 3 tests --------------------------------------------------------------------------------
step_tests() {
    local log=$OUT/tests.log t=$1 xml=$WORK/pytest_gpu.xml
    : >"$log"
    no_gpu tests && return
    rm -f "$xml"
    # Deselected, each with its reason in the report: in image mode the tests of what the image
    # lacks; in both modes the cuda run of the train-step reference when that file is not there.
    local desel=() d why
    while IFS='|' read -r d why; do
        [ -n "$d" ] || continue
        desel+=(--deselect "$d"); note tests "DESELECTED: $d: $why"
    done <<EOF
$(if [ "$MODE" = image ]; then
    [ "$(cap "$HAVE_ORT_CUDA")" = 1 ] || echo "tests/runtime/test_runners.py::test_cuda_backend_really_runs_on_cuda|onnxruntime-gpu (CUDA provider) $NOT_IN_IMAGE"
    [ "$(cap "$HAVE_ORT_TRT")" = 1 ] || echo "tests/runtime/test_runners.py::test_tensorrt_provider_runs|onnxruntime-gpu (TensorRT provider) $NOT_IN_IMAGE"
    if [ "$(cap "$HAVE_TRT")" != 1 ]; then
        echo "tests/runtime/test_runners.py::test_native_tensorrt_engine_matches_onnx_runtime|tensorrt $NOT_IN_IMAGE"
        echo "tests/export/test_tensorrt.py::test_engine_matches_pytorch_on_the_gpu|tensorrt $NOT_IN_IMAGE"
    fi
  fi
  if [ -f "$BNWVAD_SHARED/reference/official_state_dict.pkl" ] && [ ! -f "$BNWVAD_SHARED/reference/train_step_xd_B4x2_T40.npz" ]; then
    echo "tests/bnwvad/test_reference.py::test_train_step_matches_published_code[cuda]|needs $BNWVAD_SHARED/reference/train_step_xd_B4x2_T40.npz (43 MB, not carried)"
  fi)
EOF
    run "$log" "$t" "$PY" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$xml" ${desel[@]+"${desel[@]}"}
    local rc=$?
    if [ "$DRY_RUN" = 1 ]; then STATUS[tests]=DRY; return; fi
    [ $rc = 124 ] || [ $rc = 137 ] && note tests "timed out after ${t}s"
    local summary
    summary=$(grep -E '(passed|failed|skipped|errors?|no tests ran|deselected).* in [0-9.]+s' "$log" | tail -n 1)
    [ -n "$summary" ] && note tests "pytest: $summary"
    if [ ! -f "$xml" ]; then
        note tests "no test results (exit $rc)"; fail_lines tests "$log"; STATUS[tests]=FAIL; return
    fi
    local verdict
    verdict=$("$PY" - "$xml" <<'PYEOF'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
no_gpu = 0
for case in root.iter("testcase"):
    name = f"{case.get('classname', '')}::{case.get('name', '')}"
    kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), None)
    if kind is None:
        counts["passed"] += 1
        continue
    key = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
    counts[key] += 1
    msg = (case.find(kind).get("message") or "").splitlines()[0][:200] if case.find(kind) is not None else ""
    no_gpu += key == "skipped" and "NVIDIA GPU" in msg
    print(f"NOTE {key.upper()}: {name}: {msg}")
ok = counts["failed"] == counts["error"] == 0 and counts["passed"] > 0 and no_gpu == 0
print("NOTE " + ", ".join(f"{v} {k}" for k, v in counts.items())
      + (f" ({no_gpu} skipped for want of a GPU)" if no_gpu else ""))
print("VERDICT", "PASS" if ok else "FAIL")
PYEOF
)
    printf '%s\n' "$verdict" | grep '^NOTE ' | sed 's/^NOTE //' | while IFS= read -r l; do note tests "$l"; done
    if [ $rc = 0 ] && printf '%s\n' "$verdict" | grep -q '^VERDICT PASS'; then STATUS[tests]=PASS
    else STATUS[tests]=FAIL; fi
}

# -- 4 engines ------------------------------------------------------------------------------
longest_test_video() {   # the largest `snippets` value of the shared test_snippets.csv files
    local f best=0 n
    for f in "$BNWVAD_SHARED"/datasets/*/test_snippets.csv; do
        [ -f "$f" ] || continue
        n=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "snippets") c = i; next }
                     c && $c + 0 > m { m = $c + 0 } END { print m + 0 }' "$f")
        echo "  $f: longest test video $n snippets" >&2
        [ "$n" -gt "$best" ] && best=$n
    done
    echo "$best"
}

step_engines() {
    local log=$OUT/engines.log t=$1 t0=$SECONDS
    : >"$log"
    no_gpu engines && return
    local longest tmax
    longest=$(longest_test_video 2>>"$log")
    tmax=$longest
    [ "$tmax" -lt "$MIN_T" ] && tmax=$MIN_T
    note engines "profile max T = $tmax (longest test video in $BNWVAD_SHARED/datasets: ${longest:-none}; floor $MIN_T); N max $MAX_N, C max 10"
    local export=("$VENV/bin/bnwvad-export")
    [ -x "${export[0]}" ] || export=("$PY" -m bnwvad.export.cli)
    local ckpt preset=() from
    if [ -f "$BNWVAD_SHARED/reference/official_state_dict.pkl" ]; then
        ckpt=$BNWVAD_SHARED/reference/official_state_dict.pkl
        preset=(--preset xd)
        note engines "model: the published XD-Violence weights ($ckpt)"
    else
        ckpt=$WORK/random_xd.pt
        from=$(lines_of "$log")
        note engines "model: $BNWVAD_SHARED/reference/official_state_dict.pkl not found: a seeded random paper-size checkpoint (preset xd)"
        run "$log" "$(left_of $t0 "$t")" "$PY" -c "
import sys, torch
from bnwvad.checkpoint import save_checkpoint
from bnwvad.config import ModelConfig
from bnwvad.model import BNWVAD
torch.manual_seed(0)
save_checkpoint(sys.argv[1], BNWVAD(ModelConfig()).eval(), preset='xd')
print('wrote', sys.argv[1])" "$ckpt" || { note engines "could not write the random checkpoint"; fail_lines engines "$log" "$from"; }
    fi
    local ok=1 p rc from engines=1
    if [ "$MODE" = image ] && [ "$(cap "$HAVE_TRT")" != 1 ]; then
        engines=0
        note engines "TensorRT engines (build, verification, long video): tensorrt $NOT_IN_IMAGE; the ONNX exports only"
    fi
    for p in fp32 fp16; do
        local onnx=$WORK/xd_$p.onnx engine=$WORK/xd_$p.engine flag=()
        [ $p = fp16 ] && flag=(--fp16)
        rm -f "$onnx" "$engine" "$engine.json"
        from=$(lines_of "$log")
        run "$log" "$(left_of $t0 "$t")" "${export[@]}" "$ckpt" ${preset[@]+"${preset[@]}"} -o "$onnx" \
            ${flag[@]+"${flag[@]}"}
        rc=$?
        if [ "$DRY_RUN" != 1 ]; then
            if [ $rc != 0 ]; then
                ok=0; note engines "$p ONNX export failed (exit $rc)"; fail_lines engines "$log" "$from"; continue
            fi
            note engines "$p ONNX: $(grep -E '^verified against PyTorch' "$log" | tail -n 1)"
        fi
        [ $engines = 1 ] || continue
        from=$(lines_of "$log")
        run "$log" "$(left_of $t0 "$t")" "${export[@]}" engine "$onnx" -o "$engine" \
            --min-shape 1,1,1 --opt-shape 1,5,200 --max-shape "$MAX_N,10,$tmax" \
            --timing-cache "$WORK/trt.timing.cache" --checkpoint "$ckpt" ${preset[@]+"${preset[@]}"}
        rc=$?
        if [ "$DRY_RUN" != 1 ]; then
            if [ $rc != 0 ]; then
                ok=0; note engines "$p engine failed (exit $rc)"; fail_lines engines "$log" "$from"; continue
            fi
            note engines "$p engine: $(ls -l "$engine" 2>/dev/null | awk '{print $5}') bytes; $(grep -iE 'verified|max rel' "$log" | tail -n 1)"
        fi
    done
    if [ $engines = 0 ]; then
        if [ "$DRY_RUN" = 1 ]; then STATUS[engines]=DRY; return; fi
        [ $ok = 1 ] && STATUS[engines]=SKIP || STATUS[engines]=FAIL
        return
    fi
    # Both engines on one video as long as the profile allows (C = the model's crops: the runtime
    # refuses others), against PyTorch on the GPU.
    cat >"$WORK/engine_long.py" <<'PYEOF'
import sys
import time
from pathlib import Path

import numpy as np

work, ckpt, preset, tmax = Path(sys.argv[1]), sys.argv[2], sys.argv[3] or None, int(sys.argv[4])
from bnwvad.runtime import load_runner

engines = {p: work / f"xd_{p}.engine" for p in ("fp32", "fp16")}
meta = None
for e in engines.values():
    if e.is_file():
        with load_runner(e) as r:
            meta = r.meta
        break
crops = (meta.crops if meta is not None else None) or 10       # the runner refuses another C
dim = (meta.feature_dim if meta is not None else None) or 1024
rng = np.random.default_rng(0)
f = (rng.random((1, crops, tmax, dim), dtype=np.float32) * 2).astype(np.float32)
lengths = np.array([tmax], np.int64)
ref = None
try:
    import torch
    from bnwvad import load_model
    if torch.cuda.is_available() and meta is not None:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        m = load_model(ckpt, preset=preset, device="cuda").eval()
        with torch.no_grad():
            out = m(torch.from_numpy(f).cuda(), torch.from_numpy(lengths).cuda())
        ref = {"score": out.score.float().cpu().numpy(), "dfm": out.dfm.float().cpu().numpy(),
               "anomaly": out.anomaly.float().cpu().numpy()}
        del m, out
        torch.cuda.empty_cache()
except Exception as e:  # noqa: BLE001
    print(f"LONG reference: PyTorch on CUDA failed: {str(e).splitlines()[0][:200]}")
bad = 0
for p, limit in (("fp32", 1e-3), ("fp16", 2e-2)):
    engine = work / f"xd_{p}.engine"
    if not engine.is_file():
        print(f"LONG {p}: no engine"); bad += 1; continue
    try:
        with load_runner(engine) as r:
            t0 = time.perf_counter(); got = r.run(f, lengths); dt = time.perf_counter() - t0
        finite = all(np.isfinite(got[k]).all() for k in ("score", "dfm", "anomaly"))
        msg = f"LONG {p}: N,C,T = 1,{crops},{tmax} in {dt:.2f} s, finite {finite}"
        if ref is not None:
            errs = {k: float(np.abs(got[k] - ref[k]).max() / max(np.abs(ref[k]).max(), 1e-30)) for k in ref}
            msg += ", rel_to_max vs PyTorch CUDA " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items())
            msg += f" (limit {limit:g})"
            finite = finite and max(errs.values()) <= limit
        print(msg + ("" if finite else "  <- FAIL"))
        bad += not finite
    except Exception as e:  # noqa: BLE001
        print(f"LONG {p}: failed: {str(e).splitlines()[0][:300]}"); bad += 1
sys.exit(1 if bad else 0)
PYEOF
    run "$log" "$(left_of $t0 "$t")" "$PY" "$WORK/engine_long.py" "$WORK" "$ckpt" "${preset[1]:-}" "$tmax"
    rc=$?
    if [ "$DRY_RUN" = 1 ]; then STATUS[engines]=DRY; return; fi
    grep '^LONG ' "$log" | sed 's/^LONG //' | while IFS= read -r l; do note engines "long video: $l"; done
    [ $rc != 0 ] && ok=0
    [ $ok = 1 ] && STATUS[engines]=PASS || STATUS[engines]=FAIL
    if [ "$(left_of $t0 "$t")" = 0 ]; then note engines "the step used up its ${t}s"; fi
}

# -- 5 bench --------------------------------------------------------------------------------
step_bench() {
    local log=$OUT/bench.log t=$1 bout=$WORK/bench
    : >"$log"
    no_gpu bench && return
    rm -f "$bout/report.json" "$bout/report.md"
    if [ "$MODE" = image ]; then       # only the backends whose packages the image has
        local b keep=() what
        for b in ${BENCH_BACKENDS//,/ }; do
            case "$b" in
                ort_cuda_*) what=HAVE_ORT_CUDA ;;
                ort_trt_*) what=HAVE_ORT_TRT ;;
                trt_*) what=HAVE_TRT ;;
                *) keep+=("$b"); continue ;;
            esac
            if [ "$(cap "${!what}")" = 1 ]; then keep+=("$b")
            else note bench "$b: SKIPPED: $([ $what = HAVE_TRT ] && echo tensorrt || echo onnxruntime-gpu) $NOT_IN_IMAGE"; fi
        done
        BENCH_BACKENDS=$(IFS=,; echo "${keep[*]}")
    fi
    # shellcheck disable=SC2086  # GPU_CHECK_BENCH_ARGS is a list of options
    run "$log" "$t" "$PY" bench/run.py --quick --backends "$BENCH_BACKENDS" --out "$bout" \
        --demo-root "$WORK/demo_data" ${GPU_CHECK_BENCH_ARGS:-}
    local rc=$?
    if [ "$DRY_RUN" = 1 ]; then STATUS[bench]=DRY; return; fi
    [ $rc = 124 ] || [ $rc = 137 ] && note bench "timed out after ${t}s"
    [ -f "$bout/report.md" ] && cp "$bout/report.md" "$OUT/bench_report.md"
    [ -f "$bout/report.json" ] && cp "$bout/report.json" "$OUT/bench_report.json"
    if [ ! -f "$bout/report.json" ]; then
        note bench "no report (exit $rc)"; fail_lines bench "$log"; STATUS[bench]=FAIL; return
    fi
    local verdict
    verdict=$("$PY" - "$bout/report.json" "$BENCH_BACKENDS" <<'PYEOF'
import json
import sys

rep = json.load(open(sys.argv[1]))
wanted = sys.argv[2].split(",")
backends = rep.get("backends", {})
ok = bool(rep.get("ok"))
for name in wanted:
    b = backends.get(name, {"status": "absent from the report"})
    acc = rep.get("accuracy", {}).get(name, {})
    line = f"{name}: {b.get('status')}"
    if b.get("reason"):
        line += f" ({str(b['reason'])[:200]})"
    if b.get("providers"):
        line += f" providers {b['providers'][:2]}"
    if acc:
        line += f"; accuracy ok {acc.get('ok')}"
    print("NOTE " + line)
    ok = ok and b.get("status") == "measured"
if rep.get("failures"):
    print("NOTE failures: " + ", ".join(rep["failures"]))
head = (rep.get("headline") or {}).get("line")
if head:
    print("NOTE headline: " + head)
print("VERDICT", "PASS" if ok else "FAIL")
PYEOF
)
    printf '%s\n' "$verdict" | grep '^NOTE ' | sed 's/^NOTE //' | while IFS= read -r l; do note bench "$l"; done
    if [ $rc = 0 ] && printf '%s\n' "$verdict" | grep -q '^VERDICT PASS'; then STATUS[bench]=PASS
    else STATUS[bench]=FAIL; [ $rc != 0 ] && note bench "bench/run.py exit $rc"; fi
}

# -- the report -----------------------------------------------------------------------------
write_report() {
    local md=$OUT/gpu_check.md s
    {
        echo "# bnwvad GPU check"
        echo
        echo "- when: $(date -u '+%Y-%m-%d %H:%M UTC'), host $(hostname 2>/dev/null || echo ?)"
        if git rev-parse --short HEAD >/dev/null 2>&1; then
            echo "- git: $(git rev-parse --short HEAD)$(git diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
        else
            echo "- git: no repository here (a copy of the working tree)"
        fi
        echo "- budget ${BUDGET}s, used $((SECONDS - START))s; options: dry-run $DRY_RUN, skip-setup $SKIP_SETUP, force $FORCE"
        echo "- mode: $MODE ($MODE_WHY); python: $PY$([ -n "$IMAGE_PY" ] && echo " over the image's $IMAGE_PY")"
        echo "- shared folder: $BNWVAD_SHARED ($SHARED_FROM; $(shared_state)); work files: $WORK"
        echo
        echo "| step | what | status | seconds | limit |"
        echo "|---|---|---|---:|---:|"
        local i=1
        for s in "${STEPS[@]}"; do
            echo "| $i $s | ${TITLE[$s]} | ${STATUS[$s]:-NOT RUN} | ${SECS[$s]:-} | ${LIMIT[$s]:-} |"
            i=$((i + 1))
        done
        for s in "${STEPS[@]}"; do
            echo
            echo "## $s: ${STATUS[$s]:-NOT RUN} (log: $s.log)"
            echo
            echo '```'
            if [ -s "$WORK/notes_$s" ]; then cat "$WORK/notes_$s"; else echo "(nothing recorded)"; fi
            echo '```'
        done
        if [ -f "$OUT/bench_report.md" ]; then
            echo
            echo "The benchmark's own report: bench_report.md / bench_report.json."
        fi
    } >"$md"
}

decide_mode
if [ "$MODE" = image ]; then
    VENV=${IMAGE_VENV:-$WORK/image_venv}
    PY=$VENV/bin/python
    WEIGHT[setup]=12                    # seconds, not minutes: leave the time to the GPU steps
    TITLE[setup]="image mode: the machine's python3 + this checkout (offline, no deps)"
fi
say "bnwvad GPU check: budget ${BUDGET}s, out $OUT, work $WORK$([ "$DRY_RUN" = 1 ] && echo ', DRY RUN')"
say "mode $MODE: $MODE_WHY; venv $VENV"
say "shared folder: $BNWVAD_SHARED ($SHARED_FROM; $(shared_state))"
i=1
for s in "${STEPS[@]}"; do
    LIMIT[$s]=$(share_of "$s")
    say "== $i/${#STEPS[@]} $s: ${TITLE[$s]} (limit ${LIMIT[$s]}s)"
    t0=$SECONDS
    "step_$s" "${LIMIT[$s]}"
    SECS[$s]=$((SECONDS - t0))
    [ "${STATUS[$s]:-}" = DRY ] && DRY_CLOCK=$((DRY_CLOCK + LIMIT[$s]))
    say "== $s: ${STATUS[$s]:-?} in ${SECS[$s]}s"
    i=$((i + 1))
done
write_report
echo
cat "$OUT/gpu_check.md"
echo
rc=0
for s in "${STEPS[@]}"; do
    case "${STATUS[$s]:-}" in PASS|SKIP|DRY) ;; *) rc=1 ;; esac
done
say "report: $OUT/gpu_check.md; exit $rc"
exit $rc
