//! Routes in one kernel table that the controller owns: `blackhole` host routes, one per VIP it
//! announces, marked with its own route protocol number so that a routing daemon can export
//! exactly them and the controller removes only its own (also with no daemon: [`Netlink::flush`]).

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::{
    packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
    RouteMessageBuilder,
};

use super::{Netlink, NetlinkError, EEXIST};

/// ESRCH: deleting a route that is not there.
const ESRCH: i32 = 3;

fn blackhole(address: IpAddr, table: u32, protocol: u8) -> RouteMessage {
    let message = match address {
        IpAddr::V4(v4) => RouteMessageBuilder::<std::net::Ipv4Addr>::new().destination_prefix(v4, 32),
        IpAddr::V6(v6) => return RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(v6, 128)
            .table_id(table)
            .protocol(RouteProtocol::from(protocol))
            .kind(RouteType::BlackHole)
            .build(),
    };
    message.table_id(table).protocol(RouteProtocol::from(protocol)).kind(RouteType::BlackHole).build()
}

impl Netlink {
    /// Adds `blackhole address/32` (or /128) to `table` with route protocol `protocol`; already
    /// there is not an error.
    pub async fn add_blackhole(&self, address: IpAddr, table: u32, protocol: u8) -> Result<(), NetlinkError> {
        match self.handle.route().add(blackhole(address, table, protocol)).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -EEXIST => Ok(()),
            Err(source) => Err(NetlinkError::Request { what: format!("adding blackhole {address} to table {table}"), source }),
        }
    }

    /// Removes that route; not there is not an error.
    pub async fn remove_blackhole(&self, address: IpAddr, table: u32, protocol: u8) -> Result<(), NetlinkError> {
        match self.handle.route().del(blackhole(address, table, protocol)).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -ESRCH => Ok(()),
            Err(source) => Err(NetlinkError::Request { what: format!("removing blackhole {address} from table {table}"), source }),
        }
    }

    /// The host routes of `table` with route protocol `protocol`, both families.
    pub async fn routes(&self, table: u32, protocol: u8) -> Result<Vec<IpAddr>, NetlinkError> {
        let mut found: Vec<IpAddr> = self.own_routes(table, protocol).await?.into_iter().map(|(address, _)| address).collect();
        found.sort();
        Ok(found)
    }

    /// Removes every host route of `table` with route protocol `protocol`, both families, whatever
    /// its type, and returns the destinations removed; an empty table is not an error. Each route
    /// is deleted with the message the kernel listed it by, so that exactly it goes.
    pub async fn flush(&self, table: u32, protocol: u8) -> Result<Vec<IpAddr>, NetlinkError> {
        let mut removed = Vec::new();
        for (address, message) in self.own_routes(table, protocol).await? {
            match self.handle.route().del(message).execute().await {
                Ok(()) => removed.push(address),
                // Gone meanwhile: not removed by us.
                Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -ESRCH => {}
                Err(source) => return Err(NetlinkError::Request { what: format!("removing {address} from table {table}"), source }),
            }
        }
        removed.sort();
        Ok(removed)
    }

    /// The host routes of `table` with `protocol`, with the messages that list them.
    async fn own_routes(&self, table: u32, protocol: u8) -> Result<Vec<(IpAddr, RouteMessage)>, NetlinkError> {
        let mut found = Vec::new();
        let requests = [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().table_id(table).build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().table_id(table).build(),
        ];
        for request in requests {
            let mut stream = self.handle.route().get(request).execute();
            loop {
                match stream.try_next().await {
                    Ok(Some(message)) => {
                        if let Some(address) = own_route(&message, table, protocol) {
                            found.push((address, message));
                        }
                    }
                    Ok(None) => break,
                    Err(source) => return Err(NetlinkError::Request { what: format!("listing table {table}"), source }),
                }
            }
        }
        Ok(found)
    }
}

/// The destination of `message` when it is one of ours: a host route of `table` with `protocol`.
fn own_route(message: &RouteMessage, table: u32, protocol: u8) -> Option<IpAddr> {
    let in_table = message.attributes.iter().find_map(|attribute| match attribute {
        RouteAttribute::Table(table) => Some(*table),
        _ => None,
    });
    let message_table = in_table.unwrap_or(u32::from(message.header.table));
    if message_table != table || u8::from(message.header.protocol) != protocol {
        return None;
    }
    let host = if message.header.address_family == rtnetlink::packet_route::AddressFamily::Inet { 32 } else { 128 };
    if message.header.destination_prefix_length != host {
        return None;
    }
    message.attributes.iter().find_map(|attribute| match attribute {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}
