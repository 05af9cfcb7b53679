"""A real local environment for the demo and the end-to-end tests.

Everything here runs real upstream programs on loopback: etcd, kube-apiserver,
kube-controller-manager and kubectl (one binary built from the Kubernetes Go modules by
``tests/cluster/build.sh``), the distribution registry, helm, crane and skopeo. Nothing here is
used by the operator itself.
"""
