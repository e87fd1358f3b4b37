#!/usr/bin/env bash
# Mutation testing (mutmut 3) over receive/, store/, jobs/, send/, audit/, results/ and tls.py, killed by
# the unit and integration tests ([tool.mutmut] in pyproject.toml). Outside CI: a full run takes hours.
#
#   bash scripts/mutation.sh                      # every mutant
#   bash scripts/mutation.sh "dicomnode.jobs.*"   # a subset (mutmut's mutant-name patterns)
#
# Prints the score per package (killed / all, timeouts counted as killed). Surviving mutants get a
# test, or are listed with their reason in docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/mutmut run --max-children "${MUTATION_CHILDREN:-2}" "$@" || true
.venv/bin/mutmut results --all true | .venv/bin/python -c '
import collections, re, sys
score = collections.defaultdict(collections.Counter)
for line in sys.stdin:
    match = re.match(r"\s*(dicomnode\.[\w.]+?)\.x\w*__mutmut_\d+: (\w[\w ]*)", line) or \
        re.match(r"\s*(dicomnode\.[\w.]+?)\.\w+__mutmut_\d+: (\w[\w ]*)", line)
    if not match:
        continue
    module, status = match.groups()
    parts = module.split(".")
    package = "tls.py" if parts[1] == "tls" else parts[1] + "/"
    score[package][status.strip()] += 1
print(f"{\"package\":<10} {\"mutants\":>8} {\"killed\":>8} {\"survived\":>9} {\"other\":>6} {\"score\":>7}")
for package, counts in sorted(score.items()):
    total = sum(counts.values())
    killed = counts["killed"] + counts["timeout"]
    other = total - killed - counts["survived"]
    print(f"{package:<10} {total:>8} {killed:>8} {counts[\"survived\"]:>9} {other:>6} {killed / total:>7.0%}")
'
