#!/bin/sh
# Ask through the file portal from a shell script: no Python, no HTTP client, just folders.
#
#   examples/portal_client.sh smollm2-135m "Why is the sky blue?"
#
# Needs a node running in the home ($SYNCQ_HOME, else ~/.local/share/syncq); SYNCQ_PORTAL picks
# another portal folder. Prints the answer; exits 1 with the reason if the request is refused
# or the prompt fails.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 MODEL PROMPT..." >&2; exit 2; }
model=$1
shift
portal=${SYNCQ_PORTAL:-${SYNCQ_HOME:-$HOME/.local/share/syncq}/portal}
[ -d "$portal/inbox" ] || { echo "no portal at $portal: is \`syncq node\` running?" >&2; exit 1; }

# Write the request elsewhere, then rename it in: the node only ever sees complete folders.
name="ask-$$-$(date +%s)"
staging=$(mktemp -d)
mkdir "$staging/$name"
{
    echo "model: $model"
    echo "prompt: |-"
    printf '%s\n' "$*" | sed 's/^/  /'
} >"$staging/$name/request.yaml"
mv "$staging/$name" "$portal/inbox/$name"
rmdir "$staging"

# The node renames it queued/ID, then outbox/ID; .syncq-id inside holds the ID and our name.
while :; do
    if [ -d "$portal/errors/$name" ]; then
        cat "$portal/errors/$name/error.txt" >&2
        exit 1
    fi
    for folder in "$portal"/outbox/*; do
        if [ -f "$folder/.syncq-id" ] && grep -qx "$name" "$folder/.syncq-id"; then
            if grep -q '"status": "done"' "$folder/result.json"; then
                cat "$folder/answer.txt"
                exit 0
            fi
            cat "$folder/result.json" >&2
            exit 1
        fi
    done
    sleep 0.05
done
