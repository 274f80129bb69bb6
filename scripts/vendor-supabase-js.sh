#!/usr/bin/env bash
# Refresh the Supabase JS client the dashboard serves itself (no CDN): the UMD bundle of
# @supabase/supabase-js from the npm registry, into app/dashboard/vendor/.
#   bash scripts/vendor-supabase-js.sh [version]
set -euo pipefail
version="${1:-2.119.1}"
dest="$(cd "$(dirname "$0")/.." && pwd)/app/dashboard/vendor"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@supabase/supabase-js@$version" >/dev/null)
tar xzf "$tmp"/supabase-supabase-js-"$version".tgz -C "$tmp" package/dist/umd/supabase.js package/LICENSE package/package.json
mkdir -p "$dest"
cp "$tmp/package/dist/umd/supabase.js" "$dest/supabase.js"
cp "$tmp/package/LICENSE" "$dest/supabase-LICENSE"
echo "@supabase/supabase-js $version (MIT), dist/umd/supabase.js; refresh: bash scripts/vendor-supabase-js.sh [version]" \
    >"$dest/README"
echo "vendored @supabase/supabase-js $version into $dest"
