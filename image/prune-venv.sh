#!/bin/sh
# Removes from the operator's virtualenv what ocireg never loads; run in the image's build
# stage (Dockerfile). tests/e2e/test_image.py runs the operator from the image and loads every
# botocore model kept here. Sizes: docs/performance.md, "The image".
set -eu
site=$(echo "$1"/lib/python3*/site-packages)
# kubernetes ships a second, asyncio copy of its whole generated client (about half the
# package); nothing imports kubernetes.aio: ocireg uses the synchronous client, kopf its own.
rm -r "$site/kubernetes/aio"
# botocore's service models: only the clients ocireg creates (ecr, ecr-public, sts) and those
# of the default credential chain (sso, sso-oidc, signin) are ever loaded.
for service in "$site"/botocore/data/*/; do
  case $(basename "$service") in
    ecr | ecr-public | sts | sso | sso-oidc | signin) ;;
    *) rm -r "$service" ;;
  esac
done
