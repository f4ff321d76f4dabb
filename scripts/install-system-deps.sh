#!/usr/bin/env bash
# Installs the Debian packages distgnn's tests and multi-host runs use, only
# when a command or library they provide is missing. Needs root (CI runs as root).
set -euo pipefail
need=()
command -v ip >/dev/null       || need+=(iproute2)
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null      || need+=(openssh-client)
command -v nsenter >/dev/null  || need+=(util-linux)
command -v prometheus >/dev/null || need+=(prometheus)
# Slurm's daemons and client commands: the `launch --hosts slurm` tests run a real cluster
[ -x /usr/sbin/slurmctld ] || need+=(slurmctld)
[ -x /usr/sbin/slurmd ]    || need+=(slurmd)
command -v srun >/dev/null || need+=(slurm-client)
# grep reads the whole listing (no -q): an early exit would fail the pipe under pipefail
has_lib() { /sbin/ldconfig -p 2>/dev/null | grep "$1 " >/dev/null; }
# tcmalloc: launch preloads it into servers and trainers (--allocator)
has_lib 'libtcmalloc_minimal\.so\.4' || need+=(libtcmalloc-minimal4)
# METIS with 32-bit ids: partitions in half the memory of pymetis's 64-bit build
has_lib 'libmetis\.so\.5' || need+=(libmetis5)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "install-system-deps: missing ${need[*]}; run as root or install them with apt-get" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends keeps prometheus from pulling in node-exporter & co;
# policy-rc.d stops Debian from starting the services: tests run their own.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
