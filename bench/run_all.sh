#!/usr/bin/env bash
# Every shape of bench/scale_bench.py, one after the other, each writing its JSON:
#
#   bash bench/run_all.sh                 # all three shapes
#   bash bench/run_all.sh --admission     # the same with the admission webhook on (-admission.json)
#   bash bench/run_all.sh --in-cluster    # the operator started as a pod is (-in-cluster.json)
#   SHAPES="1k tenants" bash bench/run_all.sh
#
# Shapes and how long each took or should take on a 2-core machine (bench/README.md):
#   1k       1,000 namespaces x 10 ClusterOCIRegistry      bench/scale.json          ~8 min
#   10k     10,000 namespaces x 10 ClusterOCIRegistry      bench/scale-10k.json      ~26 min
#   tenants  5,000 namespaces, an OCIRegistry in each,     bench/scale-tenants.json  ~40 min
#            + 5 ClusterOCIRegistry (the operator's default 5-minute resync, so the idle
#            windows and their baseline are 5 minutes each)
# Any other arguments go to every run. Runs one at a time: each starts its own control plane.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-.venv/bin/python}
shapes=${SHAPES:-1k 10k tenants}
# The JSON's name says how the operator ran, in this order whatever the arguments' order.
suffix=""
[[ " $* " == *" --admission "* ]] && suffix+="-admission"
[[ " $* " == *" --in-cluster "* ]] && suffix+="-in-cluster"

for shape in $shapes; do
    case $shape in
        1k) flags=(--namespaces 1000 --registries 10) json=bench/scale$suffix.json ;;
        # P5 rewrites all 10,000 copies per sample: 10 samples instead of 20. A resync of
        # 100,000 Secrets every 20 s would be most of what the idle minute measures: 60 s.
        10k) flags=(--namespaces 10000 --registries 10 --credential-samples 10 --resync 60)
             json=bench/scale-10k$suffix.json ;;
        # The aims for this shape are per default resync period (5 min): two periods of P3,
        # and idle windows (and their baseline) of the same length: the first period (each
        # object's first resync since the fan-out) and the second (settled).
        tenants) flags=(--tenants --namespaces 5000 --registries 5 --resync 300
                        --quiet-periods 2 --idle-seconds 300)
                 json=bench/scale-tenants$suffix.json ;;
        *) echo "unknown shape: $shape (1k, 10k or tenants)" >&2; exit 2 ;;
    esac
    echo "== $shape: $python bench/scale_bench.py ${flags[*]} $* --json $json"
    started=$SECONDS
    "$python" bench/scale_bench.py "${flags[@]}" "$@" --json "$json"
    echo "== $shape took $(( (SECONDS - started) / 60 )) min"
done
