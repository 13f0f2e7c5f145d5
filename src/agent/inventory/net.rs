//! Network interfaces from /sys/class/net, addresses from getifaddrs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use super::{Interface, InventoryError, read_trimmed, sorted_names};

/// Physical interfaces of `root` (those with a `device` link: no loopback,
/// bridges, bonds, tunnels or ifb), sorted by name. IP addresses are looked up
/// only when `root` is "/", the running system.
pub fn collect_interfaces(root: &Path) -> Result<Vec<Interface>, InventoryError> {
    let dir = root.join("sys/class/net");
    let names = sorted_names(&dir, |name| {
        name != "lo" && dir.join(name).join("device").exists()
    })?;
    let addresses = if root == Path::new("/") {
        local_addresses()
    } else {
        BTreeMap::new()
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let nic = dir.join(&name);
        let Some(mac_address) = read_trimmed(&nic.join("address")) else {
            continue;
        };
        let (ipv4, ipv6) = addresses.get(&name).cloned().unwrap_or_default();
        out.push(Interface {
            mac_address: mac_address.to_ascii_lowercase(),
            ipv4_address: ipv4.map(|a| a.to_string()),
            ipv6_address: ipv6.map(|a| a.to_string()),
            // Reading carrier of a down interface fails (EINVAL): no carrier.
            has_carrier: read_trimmed(&nic.join("carrier")).as_deref() == Some("1"),
            lldp: None,
            product: read_trimmed(&nic.join("device/device")),
            vendor: read_trimmed(&nic.join("device/vendor")),
            name,
        });
    }
    Ok(out)
}

type Addresses = (Option<Ipv4Addr>, Option<Ipv6Addr>);

/// First IPv4 and first global IPv6 address of every interface.
fn local_addresses() -> BTreeMap<String, Addresses> {
    let mut out: BTreeMap<String, Addresses> = BTreeMap::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null and its family says which sockaddr it is.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let entry = out.entry(name).or_default();
        if family == libc::AF_INET && entry.0.is_none() {
            // SAFETY: AF_INET addresses are sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            entry.0 = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        } else if family == libc::AF_INET6 && entry.1.is_none() {
            // SAFETY: AF_INET6 addresses are sockaddr_in6.
            let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
            let addr = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            if !addr.is_loopback() && (addr.segments()[0] & 0xffc0) != 0xfe80 {
                entry.1 = Some(addr);
            }
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}
