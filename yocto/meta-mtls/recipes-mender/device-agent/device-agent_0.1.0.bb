# The agent at a pinned commit of main. The project has no release tag yet;
# 0.1.0 names this first pinned commit until one exists.
require device-agent.inc

SRCREV = "a39a0464af0fc34d325be4b7fd3ece0adfdb1d01"
