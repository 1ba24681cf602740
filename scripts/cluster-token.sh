#!/usr/bin/env bash
# Prints the path of the cluster token file given as $1, creating it first when it does not exist:
# 32 random bytes from the kernel as 64 hex digits, mode 0600, owned by whoever runs this. Every service
# of one cluster reads the same file (CLUSTER_TOKEN_FILE); keep it out of images and repositories.
set -euo pipefail
file="$1"
if [ ! -s "$file" ]; then
  mkdir -p "$(dirname "$file")"
  (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$file.tmp" && mv "$file.tmp" "$file")
  echo "created a cluster token in $file (mode 0600)" >&2
fi
echo "$file"
