#!/bin/sh
# One node of a multi-node alexnet-train run: torchrun with this node's share of the processes.
#
#   sh launch.sh ALEXNET-TRAIN-FLAGS...      (RUN_DIR: the run's folder, on a volume every node mounts)
#
# torchrun reads its rendezvous from PET_* variables (each of its flags --nnodes, --nproc-per-node, --node-rank,
# --master-addr, --master-port has one): Kubeflow's training operator sets them for a PyTorchJob, and the
# indexed Job sets them itself (deploy/training/indexed-job/). When RUN_DIR already holds a checkpoint (a pod
# restarted after a failure, or the job submitted again), the run continues from it; alexnet-train refuses to
# start a new run over an old one otherwise.
set -eu
: "${RUN_DIR:?RUN_DIR must name the run folder on the shared volume}"
if [ -f "$RUN_DIR/last.pt" ]; then
  set -- "$@" --resume "$RUN_DIR/last.pt"
fi
echo "alexnet-train-launch: node ${PET_NODE_RANK:-0} of ${PET_NNODES:-1}, ${PET_NPROC_PER_NODE:-1} process(es)," \
  "rendezvous ${PET_MASTER_ADDR:-localhost}:${PET_MASTER_PORT:-29500}, run $RUN_DIR" >&2
exec torchrun --no-python alexnet-train --output "$RUN_DIR" "$@"
