# The agent from the tip of main. Not chosen unless asked for:
#   PREFERRED_VERSION_device-agent = "0.1.0+git%"
# Without more it builds the commit below, so parsing never needs the
# network; to follow main set DEVICE_AGENT_GIT_SRCREV = "${AUTOREV}" too.
# The module pins are shared with the release recipe: when main changes
# go.mod, run `make yocto-pins` on that commit.
require device-agent.inc

DEFAULT_PREFERENCE = "-1"

PV = "0.1.0+git"
DEVICE_AGENT_GIT_SRCREV ?= "f7cc6bce9d0db5931586813c19a9802065effb01"
SRCREV = "${DEVICE_AGENT_GIT_SRCREV}"
