"""What this machine is and whether trtserve's GPU path works on it: the machine description recorded
beside every measurement (`machine`), and `trtserve gpu-check` (`gpu_check`)."""
