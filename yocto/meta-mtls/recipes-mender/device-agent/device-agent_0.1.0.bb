# The agent at a pinned commit of main. The project has no release tag yet;
# 0.1.0 names this first pinned commit until one exists.
require device-agent.inc

SRCREV = "f7cc6bce9d0db5931586813c19a9802065effb01"
