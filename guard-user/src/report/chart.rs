//! What the SVG chart shows, worked out from the records and the report.

use plotters::style::RGBColor;

use super::MIB;
use super::evidence::{SampleView, samples_of, stall_evidence};
use super::model::{Incident, Report};
use super::svg::{DRY_RUN_COLOUR, KILL_COLOUR, OOM_COLOUR};
use super::text::{cgroup_name, date_time};
use crate::events::{Event, Record};

/// What the chart shows, in chart units: seconds since the first incident
/// began, MiB, ms of stall per second.
pub(super) struct Chart {
    pub(super) title: String,
    pub(super) x: (f64, f64),
    pub(super) memory: Vec<MemorySeries>,
    pub(super) memory_top: f64,
    /// Limits too far above the data to draw without flattening it.
    pub(super) off_chart: Vec<String>,
    pub(super) stall: Vec<StallSeries>,
    pub(super) stall_from: &'static str,
    pub(super) stall_top: f64,
    pub(super) markers: Vec<Marker>,
}

/// A cgroup's stall over time, in ms per second.
pub(super) type StallSeries = (String, Vec<(f64, f64)>);

pub(super) struct MemorySeries {
    pub(super) cgroup: String,
    pub(super) current: Vec<(f64, f64)>,
    pub(super) high: Vec<(f64, f64)>,
    pub(super) max: Vec<(f64, f64)>,
}

pub(super) struct Marker {
    pub(super) at: f64,
    pub(super) label: String,
    pub(super) colour: RGBColor,
}

pub(super) fn chart(sorted: &[&Record], report: &Report) -> Chart {
    let incidents = &report.incidents;
    let axis = Axis::new(incidents);
    let (memory, sampled_stall) = sampled_series(sorted, incidents, &axis);
    // Per-pass events, where recorded, say when the stall happened to the
    // millisecond; the samples' counters only per interval, and only for
    // the cgroup the stall was charged to. So events win when there are any.
    let (stall, stall_from) =
        if sampled_stall.is_empty() || any_stall_event(sorted, incidents, &axis) {
            (
                event_stall(sorted, incidents, &axis),
                "from reclaim and penalty-sleep events",
            )
        } else {
            (sampled_stall, "from the kernel's counters in samples")
        };
    let (memory_top, off_chart) = memory_top(&memory);
    let stall_top = highest(stall.iter().flat_map(|(_, s)| s));
    Chart {
        title: title(incidents),
        x: (axis.x0, axis.x1),
        memory,
        memory_top,
        off_chart,
        stall,
        stall_from,
        stall_top: with_headroom(stall_top),
        markers: markers(incidents, &axis),
    }
}

/// The time axis: seconds since the first incident began, padded around the
/// incidents and the memory their kills gave back.
struct Axis {
    t0: u64,
    x0: f64,
    x1: f64,
}

impl Axis {
    fn new(incidents: &[Incident]) -> Self {
        let t0 = incidents
            .iter()
            .map(|i| i.start.mono_ns)
            .min()
            .unwrap_or_default();
        let mut last = incidents
            .iter()
            .map(|i| seconds_since(t0, i.end.mono_ns))
            .fold(0.0, f64::max);
        for r in incidents.iter().flat_map(|i| {
            i.kills
                .iter()
                .filter_map(|k| k.recovery)
                .chain(i.oom_kills.iter().filter_map(|o| o.recovery))
        }) {
            last = last.max(seconds_since(t0, r.lowest_at.mono_ns));
        }
        let pad = (last * 0.2).max(1.0);
        Self {
            t0,
            x0: -pad,
            x1: last + pad,
        }
    }

    /// Where the kernel-clock instant `t` falls on the axis.
    fn at(&self, t: u64) -> f64 {
        seconds_since(self.t0, t)
    }

    fn shows(&self, t: u64) -> bool {
        (self.x0..=self.x1).contains(&self.at(t))
    }
}

fn seconds_since(t0: u64, t: u64) -> f64 {
    (i128::from(t) - i128::from(t0)) as f64 / 1e9
}

/// Memory of each cgroup the incidents were sampled through, and the stall
/// its samples' counters show.
fn sampled_series(
    sorted: &[&Record],
    incidents: &[Incident],
    axis: &Axis,
) -> (Vec<MemorySeries>, Vec<StallSeries>) {
    let mut sampled: Vec<&str> = incidents
        .iter()
        .filter_map(|i| i.sampled_cgroup.as_deref())
        .collect();
    sampled.sort_unstable();
    sampled.dedup();
    let mut memory = Vec::new();
    let mut stall = Vec::new();
    for cg in sampled {
        let samples: Vec<SampleView> = samples_of(sorted, cg)
            .into_iter()
            .filter(|s| axis.shows(s.at))
            .collect();
        memory.push(memory_series(sorted, cg, &samples, axis));
        let steps = counter_steps(&samples, axis);
        if !steps.is_empty() {
            stall.push((cg.to_owned(), steps));
        }
    }
    (memory, stall)
}

fn memory_series(
    sorted: &[&Record],
    cg: &str,
    samples: &[SampleView],
    axis: &Axis,
) -> MemorySeries {
    let mib = |b: u64| b as f64 / MIB;
    // The guard read memory.current when it decided to kill: one more
    // point, where samples are sparse (a short incident falls between
    // two of them).
    let mut current: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (axis.at(s.at), mib(s.current)))
        .chain(
            sorted
                .iter()
                .filter(|r| axis.shows(r.mono_ns))
                .filter_map(|r| match &r.event {
                    Event::Kill {
                        cgroup,
                        memory_current,
                        ..
                    } if cgroup == cg => Some((axis.at(r.mono_ns), mib(*memory_current))),
                    _ => None,
                }),
        )
        .collect();
    current.sort_by(|a, b| a.0.total_cmp(&b.0));
    MemorySeries {
        cgroup: cg.to_owned(),
        current,
        high: samples
            .iter()
            .filter_map(|s| s.high.map(|h| (axis.at(s.at), mib(h))))
            .collect(),
        max: samples
            .iter()
            .filter_map(|s| s.max.map(|m| (axis.at(s.at), mib(m))))
            .collect(),
    }
}

/// A step per interval between samples: the kernel's counter says how much
/// stall accrued in it, not when within it.
fn counter_steps(samples: &[SampleView], axis: &Axis) -> Vec<(f64, f64)> {
    let mut steps = Vec::new();
    for pair in samples.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.at <= a.at || b.stall_total_ns < a.stall_total_ns {
            continue;
        }
        let rate =
            (b.stall_total_ns - a.stall_total_ns) as f64 / 1e6 / ((b.at - a.at) as f64 / 1e9);
        steps.push((axis.at(a.at), rate));
        steps.push((axis.at(b.at), rate));
    }
    steps
}

fn any_stall_event(sorted: &[&Record], incidents: &[Incident], axis: &Axis) -> bool {
    sorted.iter().any(|r| {
        axis.shows(r.mono_ns)
            && incidents
                .iter()
                .any(|i| stall_evidence(r, &i.cgroup).is_some())
    })
}

/// Each incident's stall from its reclaim passes and penalty sleeps, in
/// bins of a sixtieth of the axis.
fn event_stall(sorted: &[&Record], incidents: &[Incident], axis: &Axis) -> Vec<StallSeries> {
    let deaths = deaths(sorted);
    let (x0, x1) = (axis.x0, axis.x1);
    let width = ((x1 - x0) / 60.0).max(0.1);
    let mut stall = Vec::new();
    for i in incidents {
        let mut bins = vec![0.0f64; ((x1 - x0) / width).ceil() as usize + 1];
        for r in sorted.iter().filter(|r| axis.shows(r.mono_ns)) {
            if let Some((from, to)) = stalled_span(r, &i.cgroup, &deaths) {
                spread(
                    &mut bins,
                    (axis.at(from) - x0) / width,
                    (axis.at(to) - x0) / width,
                );
            }
        }
        if bins.iter().any(|&b| b > 0.0) {
            let steps = bins
                .iter()
                .enumerate()
                .flat_map(|(k, &rate)| {
                    let from = x0 + k as f64 * width;
                    [(from, rate), (from + width, rate)]
                })
                .collect();
            stall.push((i.cgroup.clone(), steps));
        }
    }
    stall
}

/// Who was killed and when (pid, kernel-clock ns): dry-run kills kill nobody.
fn deaths(sorted: &[&Record]) -> Vec<(u32, u64)> {
    sorted
        .iter()
        .filter_map(|r| match &r.event {
            Event::Kill {
                pid,
                dry_run: false,
                ..
            }
            | Event::OomKill { pid, .. } => Some((*pid, r.mono_ns)),
            _ => None,
        })
        .collect()
}

/// When a task of `cgroup` or below stalled, if `r` says it did.
///
/// A penalty sleep begins at its record; a reclaim pass is recorded when it
/// ends. The caller spreads the span over the bins it covers, so a 200 ms
/// sleep does not read as 2 s per second.
fn stalled_span(r: &Record, cgroup: &str, deaths: &[(u32, u64)]) -> Option<(u64, u64)> {
    match &r.event {
        // A penalty sleep is killable: it ends when its task dies.
        Event::Throttle { pid, .. } => stall_evidence(r, cgroup).map(|ns| {
            let end = r.mono_ns.saturating_add(ns);
            let died = deaths
                .iter()
                .filter(|(p, t)| p == pid && *t >= r.mono_ns)
                .map(|&(_, t)| t)
                .min();
            (r.mono_ns, died.map_or(end, |t| t.min(end)))
        }),
        _ => stall_evidence(r, cgroup).map(|ns| (r.mono_ns.saturating_sub(ns), r.mono_ns)),
    }
}

/// The memory panel's top, and a note for each memory.max left off it.
fn memory_top(memory: &[MemorySeries]) -> (f64, Vec<String>) {
    let data_top = highest(memory.iter().flat_map(|s| s.current.iter().chain(&s.high)));
    let mut memory_top = data_top;
    let mut off_chart = Vec::new();
    for s in memory {
        let max = highest(&s.max);
        if max > 3.0 * data_top.max(1.0) {
            off_chart.push(format!("memory.max {max:.0} MiB is above the chart"));
        } else {
            memory_top = memory_top.max(max);
        }
    }
    (with_headroom(memory_top), off_chart)
}

/// The largest y of `points`, 0 for none.
fn highest<'p>(points: impl IntoIterator<Item = &'p (f64, f64)>) -> f64 {
    points.into_iter().map(|&(_, y)| y).fold(0.0, f64::max)
}

/// Headroom for the legend and the marker labels above the data.
fn with_headroom(top: f64) -> f64 {
    (top * 1.4).max(1.0)
}

fn markers(incidents: &[Incident], axis: &Axis) -> Vec<Marker> {
    let mut markers = Vec::new();
    for i in incidents {
        for k in &i.kills {
            let (verb, colour) = if k.dry_run {
                ("would kill", DRY_RUN_COLOUR)
            } else {
                ("SIGKILL", KILL_COLOUR)
            };
            markers.push(Marker {
                at: axis.at(k.at.mono_ns),
                label: format!("{verb} {}[{}]", k.comm, k.pid),
                colour,
            });
        }
        for o in &i.oom_kills {
            markers.push(Marker {
                at: axis.at(o.at.mono_ns),
                label: format!("kernel OOM kill {}[{}]", o.comm, o.pid),
                colour: OOM_COLOUR,
            });
        }
    }
    markers
}

/// The incidents' cgroups, in order of first appearance, and when the first began.
fn title(incidents: &[Incident]) -> String {
    let mut cgroups: Vec<&str> = Vec::new();
    for name in incidents.iter().map(|i| cgroup_name(&i.cgroup)) {
        if !cgroups.contains(&name) {
            cgroups.push(name);
        }
    }
    let when = incidents
        .first()
        .map(|i| format!("{} UTC", date_time(i.start.unix_ms)))
        .unwrap_or_default();
    format!(
        "guard {}: {}, {when}",
        if incidents.len() == 1 {
            "incident"
        } else {
            "incidents"
        },
        cgroups.join(", ")
    )
}

/// Adds one stalled interval, given in bin units `[from, to)`, to the bins
/// it overlaps: a task stalled for a whole bin adds 1000 ms/s to it.
fn spread(bins: &mut [f64], from: f64, to: f64) {
    let first = from.floor().max(0.0) as usize;
    for (k, bin) in bins.iter_mut().enumerate().skip(first) {
        if k as f64 >= to {
            break;
        }
        *bin += 1e3 * (to.min(k as f64 + 1.0) - from.max(k as f64)).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::*;
    use crate::report::{SEC, analyze};

    #[test]
    fn a_short_incident_between_samples_is_drawn_from_its_passes_and_the_kill() {
        // As a fast kill looks: the incident falls between two samples, the
        // slice's counters show no stall (it was charged to a child), but
        // the passes and the guard's own reading at the kill were recorded.
        let mut records = vec![hello(), sample(SEED, at_ms(0), 2 << 20, 0, (0, ""))];
        for k in 0..20 {
            records.push(reclaim(at_ms(600 + k * 5), 4242, "grep", 0));
        }
        // A 2 s penalty sleep that the kill cuts short.
        records.push(throttle(at_ms(650), 4242, "grep", 2 * SEC));
        records.push(verdict(at_ms(700), at_ms(595)));
        records.push(kill(at_ms(702), false));
        records.push(sample(SEED, at_ms(720), 1 << 20, 0, (0, "")));
        let sorted: Vec<&Record> = records.iter().collect();
        let report = analyze(&records);
        let c = chart(&sorted, &report);
        assert_eq!(c.stall_from, "from reclaim and penalty-sleep events");
        let peak = c
            .stall
            .iter()
            .flat_map(|(_, s)| s.iter().map(|&(_, y)| y))
            .fold(0.0, f64::max);
        assert!(peak > 0.0, "the passes' stall is drawn");
        let kill_x = (at_ms(702) - at_ms(595)) as f64 / 1e9;
        let after: f64 = c
            .stall
            .iter()
            .flat_map(|(_, s)| {
                s.iter()
                    .filter(|&&(x, _)| x > kill_x + 0.1)
                    .map(|&(_, y)| y)
            })
            .fold(0.0, f64::max);
        assert_eq!(after, 0.0, "the victim's penalty sleep ends with it");
        let seed = c.memory.iter().find(|m| m.cgroup == SEED).expect("series");
        let top = seed.current.iter().map(|&(_, y)| y).fold(0.0, f64::max);
        assert_eq!(top, 97.0, "the kill's reading of memory.current is a point");
        assert!(
            seed.current.windows(2).all(|w| w[0].0 <= w[1].0),
            "in time order"
        );
    }

    #[test]
    fn without_samples_stall_is_drawn_from_events_spread_over_their_time() {
        let records: Vec<Record> = seed_incident()
            .into_iter()
            .filter(|r| !matches!(r.event, Event::Sample { .. }))
            .collect();
        let report = analyze(&records);
        let text = report.to_string();
        assert!(
            text.contains("memory back:  unknown, no sample both before and after the kill"),
            "{text}"
        );
        let sorted: Vec<&Record> = records.iter().collect();
        let chart = chart(&sorted, &report);
        assert!(chart.memory.is_empty());
        let (_, steps) = chart.stall.first().expect("a stall line from the events");
        // One task at a time sleeps its penalty in the data: a full bin of it
        // is 1000 ms/s (plus a few ms of reclaim), not a 200 ms spike in one
        // narrow bin.
        let peak = steps.iter().map(|p| p.1).fold(0.0, f64::max);
        assert!((1000.0..1200.0).contains(&peak), "peak {peak} ms/s");
        let sleeps: Vec<(f64, f64)> = records
            .iter()
            .filter_map(|r| match r.event {
                Event::Throttle { penalty_ns, .. } => {
                    let from = (r.mono_ns - at_ms(FIRST_NO_PROGRESS_MS)) as f64 / 1e9;
                    Some((from, from + penalty_ns as f64 / 1e9))
                }
                _ => None,
            })
            .collect();
        let bin = (chart.x.1 - chart.x.0) / 60.0;
        for &(t, rate) in steps.iter().filter(|p| p.1 > 500.0) {
            assert!(
                sleeps
                    .iter()
                    .any(|&(a, b)| t >= a - bin - 1e-9 && t <= b + bin + 1e-9),
                "{rate} ms/s at {t} s, outside every penalty sleep {sleeps:?}"
            );
        }
    }
}
