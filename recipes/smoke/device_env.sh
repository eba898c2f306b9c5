# Source on the offline GPU host (after ../shared/gpu stage.sh --install): puts the bundle and this
# repo on PYTHONPATH and registers er_verl's entry points without pip (a dist-info next to the code).
export PYTHONPATH=/tmp/site:$(pwd)${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
meta=/tmp/er_meta/er_verl-0.1.0.dist-info
mkdir -p "$meta"
printf 'Metadata-Version: 2.1\nName: er-verl\nVersion: 0.1.0\n' > "$meta/METADATA"
python3 - "$meta/entry_points.txt" <<'PY'
import sys, tomllib
eps = tomllib.load(open("pyproject.toml", "rb"))["project"]["entry-points"]
with open(sys.argv[1], "w") as f:
    for group, items in eps.items():
        f.write(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items()) + "\n")
PY
export PYTHONPATH=/tmp/er_meta:$PYTHONPATH
# The JIT cache carried in .jitcache (FlashInfer / SGLang kernels, Triton's ~/.triton), restored once per host.
# Made on a host after a run: cd ~ && tar czf - $(ls -d .cache/* | grep -v -E "pip|huggingface") .triton \
#   | split -b 15M - $OUT/cache.tgz.
if ls .jitcache/cache.tgz.* >/dev/null 2>&1 && [ ! -d ~/.cache/tvm-ffi ]; then
  cat .jitcache/cache.tgz.* | tar xzf - -C ~ && echo "jit cache restored"
fi
