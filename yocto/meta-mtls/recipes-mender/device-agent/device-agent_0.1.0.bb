# The agent at a pinned commit of main. The project has no release tag yet;
# 0.1.0 names this first pinned commit until one exists.
require device-agent.inc

SRCREV = "85af359eb78ef0015e13f73883251c90e8450447"
