#!/usr/bin/env bash
# pin-images.sh: the release step that pins every image of the prod overlay and the Dockerfile
# by digest (docs/operations.md, "Releasing: images pinned by digest").
#
#   tools/pin-images.sh          resolve each image listed in deploy/unpinned-images.txt from its
#                                registry, write its digest into deploy/k8s/overlays/prod's
#                                images (digest:, beside newTag) and into the Dockerfile's FROM
#                                lines (image:tag@sha256:…), and remove it from the list
#   tools/pin-images.sh -check   fail while the list names any image (the release's gate)
#
# Digests come from crane (`crane digest`) or docker buildx (`docker buildx imagetools
# inspect`), whichever is installed, or from the command in PIN_IMAGES_RESOLVER (given the
# image reference, it prints its digest: a test's stand-in). A digest is the one of the image
# index, so every platform of a multi-arch image stays pinned. Run it after pushing the release's
# own image (ghcr.io/postamt/postamt:X.Y.Z), commit the result, and tag that commit.
set -euo pipefail
cd "$(dirname "$0")/.."

list=deploy/unpinned-images.txt
kust=deploy/k8s/overlays/prod/kustomization.yaml
dockerfile=Dockerfile

refs() { grep -v '^[[:space:]]*\(#\|$\)' "$list" | awk '{print $1}' || true; }

if [[ "${1:-}" == "-check" ]]; then
	left=$(refs)
	if [[ -n "$left" ]]; then
		echo "pin-images: not pinned by digest yet (run tools/pin-images.sh with registry access):" >&2
		echo "$left" | sed 's/^/  /' >&2
		exit 1
	fi
	echo "pin-images: every image is pinned by digest"
	exit 0
fi

resolve() {
	local ref=$1 d
	if [[ -n "${PIN_IMAGES_RESOLVER:-}" ]]; then
		d=$($PIN_IMAGES_RESOLVER "$ref")
	elif command -v crane >/dev/null 2>&1; then
		d=$(crane digest "$ref")
	elif docker buildx version >/dev/null 2>&1; then
		d=$(docker buildx imagetools inspect --format '{{.Manifest.Digest}}' "$ref")
	else
		echo "pin-images: neither crane nor docker buildx is installed (go install github.com/google/go-containerregistry/cmd/crane@latest)" >&2
		return 2
	fi
	if [[ ! "$d" =~ ^sha256:[0-9a-f]{64}$ ]]; then
		echo "pin-images: $ref: no digest (got \"$d\"); is the registry reachable?" >&2
		return 1
	fi
	echo "$d"
}

# pin_kustomization REF DIGEST: set digest: on the images entry whose newName (or name) and
# newTag make REF. Exit status 3 when no entry does.
pin_kustomization() {
	local tmp
	tmp=$(mktemp)
	if awk -v ref="$1" -v dig="$2" '
		function flush(   i, full) {
			if (n == 0) return
			full = (nn != "" ? nn : nm) ":" tg
			for (i = 1; i <= n; i++) {
				if (full == ref && buf[i] ~ /^    digest:/) continue
				print buf[i]
				if (full == ref && buf[i] ~ /^    newTag:/) { print "    digest: " dig; done = 1 }
			}
			n = 0; nm = ""; nn = ""; tg = ""
		}
		/^images:/ { inimg = 1; print; next }
		inimg && /^  - name: / { flush(); n = 1; buf[1] = $0; nm = $3; next }
		inimg && n > 0 && /^    / { buf[++n] = $0; if ($1 == "newName:") nn = $2; if ($1 == "newTag:") tg = $2; next }
		{ flush(); if ($0 !~ /^  /) inimg = 0; print }
		END { flush(); exit done ? 0 : 3 }
	' "$kust" >"$tmp"; then
		mv "$tmp" "$kust"
	else
		local rc=$?
		rm -f "$tmp"
		return $rc
	fi
}

# pin_dockerfile REF DIGEST: REF in the Dockerfile's FROM lines becomes REF@DIGEST. Exit status
# 3 when no FROM line names REF.
pin_dockerfile() {
	local re
	re=$(printf '%s' "$1" | sed 's/[.[\*^$/]/\\&/g')
	grep -Eq "^FROM( --platform=[^ ]+)? ${re}( |$)" "$dockerfile" || return 3
	sed -E -i "s/^(FROM( --platform=[^ ]+)? )${re}( |$)/\1${re}@$2\3/" "$dockerfile"
}

for ref in $(refs); do
	digest=$(resolve "$ref")
	found=0
	pin_kustomization "$ref" "$digest" && found=1 || { rc=$?; [[ $rc == 3 ]] || exit $rc; }
	pin_dockerfile "$ref" "$digest" && found=1 || { rc=$?; [[ $rc == 3 ]] || exit $rc; }
	if [[ $found == 0 ]]; then
		echo "pin-images: $ref is listed but neither $kust nor $dockerfile names it" >&2
		exit 1
	fi
	grep -Ev "^$(printf '%s' "$ref" | sed 's/[.[\*^$/]/\\&/g')([[:space:]]|$)" "$list" >"$list.tmp" && mv "$list.tmp" "$list"
	echo "pin-images: $ref@$digest"
done
