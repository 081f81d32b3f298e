//! CNI results, read into one shape whatever the spec version: 0.3.0 and later
//! (`interfaces`, `ips`, `routes`, `dns`) and the older `ip4`/`ip6` form.

use std::net::IpAddr;

use serde_json::Value;

/// An address with its prefix length (`10.1.0.5/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an address/prefix"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IP address"))?;
        let prefix_len: u8 = p
            .parse()
            .map_err(|_| format!("{p:?} is not a prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(format!("prefix length {prefix_len} is too long in {s:?}"));
        }
        Ok(Cidr { addr, prefix_len })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The netns path for interfaces inside the pod; empty for host-side ones.
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: Cidr,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Cidr,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    /// The result as the last plugin printed it (kept for DEL's prevResult).
    pub raw: Value,
}

impl CniResult {
    /// The result of a chain that printed nothing usable (no interfaces, no addresses).
    pub fn empty() -> CniResult {
        CniResult {
            interfaces: vec![],
            ips: vec![],
            routes: vec![],
            dns: Dns::default(),
            raw: Value::Object(Default::default()),
        }
    }

    pub fn parse(raw: Value) -> Result<CniResult, String> {
        if raw.get("ip4").is_some() || raw.get("ip6").is_some() {
            return parse_legacy(raw);
        }
        let mut interfaces = Vec::new();
        for (i, v) in array(&raw, "interfaces")?.iter().enumerate() {
            interfaces.push(Interface {
                name: string(v, "name")
                    .ok_or_else(|| format!("interfaces[{i}].name is missing"))?,
                mac: string(v, "mac").unwrap_or_default().to_ascii_lowercase(),
                sandbox: string(v, "sandbox").unwrap_or_default(),
            });
        }
        let mut ips = Vec::new();
        for (i, v) in array(&raw, "ips")?.iter().enumerate() {
            let address = Cidr::parse(
                &string(v, "address").ok_or_else(|| format!("ips[{i}].address is missing"))?,
            )
            .map_err(|e| format!("ips[{i}].address: {e}"))?;
            let gateway = opt_ip(v, "gateway").map_err(|e| format!("ips[{i}].gateway: {e}"))?;
            let interface = match v.get("interface") {
                None | Some(Value::Null) => None,
                Some(x) => {
                    let n = x
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| format!("ips[{i}].interface {x} is not an index"))?;
                    if n >= interfaces.len() {
                        return Err(format!(
                            "ips[{i}].interface {n} is past the {} interfaces",
                            interfaces.len()
                        ));
                    }
                    Some(n)
                }
            };
            ips.push(IpConfig {
                address,
                gateway,
                interface,
            });
        }
        let routes = parse_routes(array(&raw, "routes")?, "routes")?;
        let dns = parse_dns(raw.get("dns"));
        Ok(CniResult {
            interfaces,
            ips,
            routes,
            dns,
            raw,
        })
    }
}

fn parse_legacy(raw: Value) -> Result<CniResult, String> {
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for key in ["ip4", "ip6"] {
        let Some(v) = raw.get(key) else { continue };
        let address = Cidr::parse(&string(v, "ip").ok_or_else(|| format!("{key}.ip is missing"))?)
            .map_err(|e| format!("{key}.ip: {e}"))?;
        let gateway = opt_ip(v, "gateway").map_err(|e| format!("{key}.gateway: {e}"))?;
        ips.push(IpConfig {
            address,
            gateway,
            interface: None,
        });
        routes.extend(parse_routes(array(v, "routes")?, &format!("{key}.routes"))?);
    }
    let dns = parse_dns(raw.get("dns"));
    Ok(CniResult {
        interfaces: vec![],
        ips,
        routes,
        dns,
        raw,
    })
}

fn parse_routes(list: &[Value], field: &str) -> Result<Vec<Route>, String> {
    let mut out = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let dst =
            Cidr::parse(&string(v, "dst").ok_or_else(|| format!("{field}[{i}].dst is missing"))?)
                .map_err(|e| format!("{field}[{i}].dst: {e}"))?;
        let gw = opt_ip(v, "gw").map_err(|e| format!("{field}[{i}].gw: {e}"))?;
        out.push(Route { dst, gw });
    }
    Ok(out)
}

fn parse_dns(v: Option<&Value>) -> Dns {
    let Some(v) = v else { return Dns::default() };
    let list = |k: &str| -> Vec<String> {
        v.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    Dns {
        nameservers: list("nameservers"),
        domain: string(v, "domain").filter(|d| !d.is_empty()),
        search: list("search"),
        options: list("options"),
    }
}

fn array<'a>(v: &'a Value, key: &str) -> Result<&'a [Value], String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!("{key} is not a list")),
    }
}

fn string(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn opt_ip(v: &Value, key: &str) -> Result<Option<IpAddr>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("{s:?} is not an IP address")),
        Some(other) => Err(format!("{other} is not a string")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_bridge_result() {
        // What Debian's bridge + host-local print (spec 1.0.0).
        let raw: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0",
            "interfaces":[{"name":"cni0","mac":"36:5A:0B:00:00:01"},
                          {"name":"veth1","mac":"aa:bb:cc:dd:ee:01"},
                          {"name":"eth0","mac":"aa:bb:cc:dd:ee:02","sandbox":"/var/run/netns/p"}],
            "ips":[{"interface":2,"address":"10.88.0.5/16","gateway":"10.88.0.1"}],
            "routes":[{"dst":"0.0.0.0/0"}],
            "dns":{"nameservers":["10.96.0.10"],"search":["svc.test"]}}"#,
        )
        .unwrap();
        let r = CniResult::parse(raw).unwrap();
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.interfaces[0].mac, "36:5a:0b:00:00:01");
        assert_eq!(r.interfaces[2].sandbox, "/var/run/netns/p");
        assert_eq!(r.ips[0].interface, Some(2));
        assert_eq!(r.ips[0].address, Cidr::parse("10.88.0.5/16").unwrap());
        assert_eq!(r.ips[0].gateway, Some("10.88.0.1".parse().unwrap()));
        assert_eq!(r.routes[0].gw, None);
        assert_eq!(r.dns.nameservers, vec!["10.96.0.10"]);
    }

    #[test]
    fn reads_the_legacy_form() {
        let raw: Value = serde_json::from_str(
            r#"{"cniVersion":"0.2.0","ip4":{"ip":"10.1.0.2/24","gateway":"10.1.0.1",
            "routes":[{"dst":"0.0.0.0/0","gw":"10.1.0.1"}]},"dns":{}}"#,
        )
        .unwrap();
        let r = CniResult::parse(raw).unwrap();
        assert!(r.interfaces.is_empty());
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.routes[0].gw, Some("10.1.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_results_name_the_field() {
        for (json, needle) in [
            (r#"{"ips":[{"address":"10.0.0.1"}]}"#, "ips[0].address"),
            (r#"{"ips":[{"address":"10.0.0.1/33"}]}"#, "too long"),
            (
                r#"{"ips":[{"address":"10.0.0.1/8","interface":3}]}"#,
                "past the 0",
            ),
            (r#"{"routes":[{"dst":"x/1"}]}"#, "routes[0].dst"),
            (r#"{"interfaces":[{"mac":"x"}]}"#, "interfaces[0].name"),
            (r#"{"ips":{}}"#, "ips is not a list"),
        ] {
            let e = CniResult::parse(serde_json::from_str(json).unwrap()).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
        }
    }
}
