package dbusauth

// IntrospectXML is the introspection answer for the object: the
// io.mender.Authentication1 interface with the same members, argument
// names, types and directions as Mender's interface description, plus the
// standard interfaces the object answers.
const IntrospectXML = `<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="io.mender.Authentication1">
    <method name="GetJwtToken">
      <arg type="s" name="token" direction="out"/>
      <arg type="s" name="server_url" direction="out"/>
    </method>
    <method name="FetchJwtToken">
      <arg type="b" name="success" direction="out"/>
    </method>
    <signal name="JwtTokenStateChange">
      <arg type="s" name="token"/>
      <arg type="s" name="server_url"/>
    </signal>
  </interface>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect">
      <arg type="s" name="xml_data" direction="out"/>
    </method>
  </interface>
  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping"/>
    <method name="GetMachineId">
      <arg type="s" name="machine_uuid" direction="out"/>
    </method>
  </interface>
</node>
`
