//! Whether another revision's object can be measured with the maps this tree's writer fills: the same maps, each of the same type, sizes and flags, with key and value of the same BTF layout.
//!
//! `--against` writes both programs' maps with this tree's `MapWriter`. A map that REV reads
//! with another layout would make it run on garbage and time a path it never takes in
//! production, so any difference refuses the comparison, naming each one.

use anyhow::{bail, Context as _, Result};
use aya_obj::{Map, Object};
use failover_common::maps::names;
use failover_ctl::maps::OPTIONAL_MAPS;

use super::btf::Btf;

/// What a map looks like to the code that writes and reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    /// `None` for the maps whose size the loader sets, whatever the object says.
    pub max_entries: Option<u32>,
    pub flags: u32,
    /// BTF layouts (see [`Btf::layout`]); `None` for a map without BTF types.
    pub key_layout: Option<String>,
    pub value_layout: Option<String>,
}

/// Maps that only the program itself reads and writes (per-CPU scratch space): each program
/// may lay them out as it likes.
const PRIVATE_MAPS: &[&str] = &["SCRATCH", "MONITOR_SCRATCH"];

/// The maps of an object, by name; the program's own data sections (`.rodata`, `.bss`) and
/// private maps are not touched by the control plane and are left out.
pub fn shapes(object: &[u8]) -> Result<Vec<MapShape>> {
    let object = Object::parse(object).context("parsing the eBPF object")?;
    let btf = object.btf.as_ref().map(|btf| Btf::parse(&btf.to_bytes())).transpose().context("reading the object's BTF")?;
    let mut shapes = Vec::new();
    for (name, map) in &object.maps {
        if name.starts_with('.') || PRIVATE_MAPS.contains(&name.as_str()) {
            continue;
        }
        let (key_layout, value_layout) = match (map, &btf) {
            (Map::Btf(definition), Some(btf)) => (
                Some(btf.layout(definition.def.btf_key_type_id).with_context(|| format!("the key type of map {name}"))?),
                Some(btf.layout(definition.def.btf_value_type_id).with_context(|| format!("the value type of map {name}"))?),
            ),
            _ => (None, None),
        };
        let loader_sized = name == names::TABLES || name == names::FLOWS;
        shapes.push(MapShape {
            name: name.clone(),
            map_type: map.map_type(),
            key_size: map.key_size(),
            value_size: map.value_size(),
            max_entries: if loader_sized { None } else { Some(map.max_entries()) },
            flags: map.map_flags(),
            key_layout,
            value_layout,
        });
    }
    shapes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(shapes)
}

/// Every way `against` differs from `current`, one line each; empty when they are the same.
pub fn differences(current: &[MapShape], against: &[MapShape]) -> Vec<String> {
    let mut found = Vec::new();
    for map in current {
        let Some(other) = against.iter().find(|other| other.name == map.name) else {
            // The writer leaves out what an older program does not have.
            if !OPTIONAL_MAPS.contains(&map.name.as_str()) {
                found.push(format!("map {} exists only in this tree", map.name));
            }
            continue;
        };
        let mut field = |what: &str, this: String, that: String| {
            if this != that {
                found.push(format!("map {}: {what} {this} here, {that} there", map.name));
            }
        };
        field("type", map.map_type.to_string(), other.map_type.to_string());
        field("key size", map.key_size.to_string(), other.key_size.to_string());
        field("value size", map.value_size.to_string(), other.value_size.to_string());
        field("max entries", format!("{:?}", map.max_entries), format!("{:?}", other.max_entries));
        field("flags", format!("{:#x}", map.flags), format!("{:#x}", other.flags));
        // Sizes are all a map without BTF can be compared by.
        if let (Some(this), Some(that)) = (&map.key_layout, &other.key_layout) {
            field("key layout", format!("`{this}`"), format!("`{that}`"));
        }
        if let (Some(this), Some(that)) = (&map.value_layout, &other.value_layout) {
            if !uses_padding_of(this, that) {
                field("value layout", format!("`{this}`"), format!("`{that}`"));
            }
        }
    }
    for other in against {
        if !current.iter().any(|map| map.name == other.name) {
            found.push(format!("map {} exists only in the other revision", other.name));
        }
    }
    found
}

/// Whether layout `this` is `that` with fields that `that` calls padding (`_padding...`)
/// given a use: the same bytes, which the other program never reads, so this tree's writer and
/// data plane may fill them.
fn uses_padding_of(this: &str, that: &str) -> bool {
    let (this, that): (Vec<&str>, Vec<&str>) = (this.split_whitespace().collect(), that.split_whitespace().collect());
    this.len() == that.len()
        && this.iter().zip(&that).all(|(here, there)| {
            here == there
                || there.split_once('@').is_some_and(|(name, offset)| {
                    name.starts_with("_padding") && here.split_once('@').is_some_and(|(_, here_offset)| here_offset == offset)
                })
        })
}

/// Refuses, naming every difference, unless `against`'s maps are laid out as `current`'s.
/// Returns how many maps were compared by sizes only (no BTF on one side).
pub fn check(current: &[u8], against: &[u8], revision: &str) -> Result<usize> {
    let (current, against) = (shapes(current).context("this tree's object")?, shapes(against).with_context(|| format!("the object of {revision}"))?);
    let found = differences(&current, &against);
    if !found.is_empty() {
        bail!(
            "{revision}'s maps are laid out differently from this tree's, so this tree's map writer cannot fill them and the comparison would time a different path; refusing:\n  {}",
            found.join("\n  ")
        );
    }
    Ok(current.iter().zip(&against).filter(|(this, that)| this.value_layout.is_none() || that.value_layout.is_none()).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(name: &str, value_size: u32, value_layout: &str) -> MapShape {
        MapShape {
            name: name.to_string(),
            map_type: 2,
            key_size: 4,
            value_size,
            max_entries: Some(1),
            flags: 0,
            key_layout: Some("u32/4".to_string()),
            value_layout: Some(value_layout.to_string()),
        }
    }

    #[test]
    fn equal_maps_have_no_differences() {
        let maps = [shape("CONFIG", 8, "u64/8"), shape("HEALTH", 4, "u32/4")];
        assert!(differences(&maps, &maps).is_empty());
    }

    #[test]
    fn every_difference_is_named() {
        let current = [shape("CONFIG", 8, "struct/8 { a@0 u32/4, b@32 u32/4, }"), shape("OWNERSHIP", 4, "u32/4")];
        let against = [shape("CONFIG", 8, "struct/8 { b@0 u32/4, a@32 u32/4, }"), shape("OLD", 4, "u32/4")];
        let found = differences(&current, &against);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("map CONFIG: value layout"), "{found:?}");
        assert_eq!(found[1], "map OWNERSHIP exists only in this tree");
        assert_eq!(found[2], "map OLD exists only in the other revision");
    }

    #[test]
    fn padding_given_a_use_and_optional_maps_are_no_difference() {
        let current = [shape("FLOWS", 8, "struct/8 { id@0 u32/4, vip_id@32 u32/4, }"), shape(names::VIP_INDEX, 4, "u32/4")];
        let against = [shape("FLOWS", 8, "struct/8 { id@0 u32/4, _padding@32 u32/4, }")];
        assert!(differences(&current, &against).is_empty());
        // The other way round is a difference: that program reads what this one calls padding.
        let found = differences(&against, &current[..1]);
        assert_eq!(found.len(), 1, "{found:?}");
        // And so is a field at another offset.
        let moved = [shape("FLOWS", 8, "struct/8 { id@0 u32/4, vip_id@0 u32/4, }")];
        assert_eq!(differences(&moved, &against).len(), 1);
    }

    #[test]
    fn this_trees_object_matches_itself_by_btf() {
        let maps = shapes(failover_ctl::objects::FAILOVER).unwrap();
        let flows = maps.iter().find(|map| map.name == names::FLOWS).expect("the flow table");
        assert!(flows.value_layout.as_deref().is_some_and(|layout| layout.starts_with("struct/")), "{flows:?}");
        assert_eq!(flows.max_entries, None, "the loader sizes the flow table");
        assert!(maps.iter().all(|map| map.value_layout.is_some()), "every map has BTF types");
        assert_eq!(check(failover_ctl::objects::FAILOVER, failover_ctl::objects::FAILOVER, "HEAD").unwrap(), 0);
    }

    #[test]
    fn sizes_still_count_without_btf() {
        let mut this = shape("BACKENDS", 28, "x");
        let mut that = shape("BACKENDS", 32, "x");
        (this.value_layout, that.value_layout) = (None, None);
        assert_eq!(differences(&[this], &[that]), ["map BACKENDS: value size 28 here, 32 there"]);
    }
}
