//! The chart drawn as SVG by plotters.

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::chart::{Chart, Marker, MemorySeries};

const MEMORY_COLOURS: [RGBColor; 3] = [
    RGBColor(31, 96, 196),
    RGBColor(20, 140, 70),
    RGBColor(0, 150, 160),
];
const HIGH_COLOUR: RGBColor = RGBColor(230, 130, 0);
const MAX_COLOUR: RGBColor = RGBColor(120, 60, 20);
pub(super) const KILL_COLOUR: RGBColor = RGBColor(215, 25, 25);
pub(super) const OOM_COLOUR: RGBColor = RGBColor(140, 20, 170);
pub(super) const DRY_RUN_COLOUR: RGBColor = RGBColor(120, 120, 120);
const SIZE: (u32, u32) = (1000, 600);

/// Plotters' SVG backend writes `<text>` elements and leaves the glyphs to
/// the viewer, so labels need no font feature (its built-in font metrics
/// only estimate the layout).
pub(super) fn draw(chart: &Chart, buf: &mut String) -> Drawn {
    let root = SVGBackend::with_string(buf, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&chart.title, ("sans-serif", 22))?;
    let (upper, lower) = root.split_vertically(310);
    draw_memory(&upper, chart)?;
    draw_stall(&lower, chart)?;
    root.present()?;
    Ok(())
}

type Drawn = Result<(), Box<dyn std::error::Error>>;
type Area<'b> = DrawingArea<SVGBackend<'b>, Shift>;
type Panel<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Memory over time: each sampled cgroup's memory.current and the limits
/// that fit, then the kill markers with their labels.
fn draw_memory(area: &Area, chart: &Chart) -> Drawn {
    let (x0, x1) = chart.x;
    let top = chart.memory_top;
    let mut mem = panel(area, chart.x, top, 24)?;
    mem.configure_mesh()
        .y_desc("memory (MiB)")
        .light_line_style(WHITE)
        .draw()?;
    for (k, s) in chart.memory.iter().enumerate() {
        draw_memory_series(&mut mem, chart, s, MEMORY_COLOURS[k % MEMORY_COLOURS.len()])?;
    }
    for (k, note) in chart.off_chart.iter().enumerate() {
        mem.draw_series(std::iter::once(Text::new(
            note.clone(),
            (x0 + (x1 - x0) * 0.01, top * (0.97 - 0.08 * k as f64)),
            ("sans-serif", 13).into_font().color(&MAX_COLOUR),
        )))?;
    }
    for (k, m) in chart.markers.iter().enumerate() {
        draw_marker(&mut mem, m, top)?;
        // Staggered, so markers close in time keep readable labels.
        mem.draw_series(std::iter::once(Text::new(
            m.label.clone(),
            (
                m.at + (x1 - x0) * 0.005,
                top * (0.97 - 0.08 * (k % 4) as f64),
            ),
            ("sans-serif", 14).into_font().color(&m.colour),
        )))?;
    }
    if chart.memory.iter().all(|s| s.current.is_empty()) {
        draw_note(
            &mut mem,
            chart.x,
            top,
            "no memory.current sample of this cgroup in these records",
        )?;
    }
    if !chart.memory.is_empty() {
        draw_legend(&mut mem, SeriesLabelPosition::UpperLeft)?;
    }
    Ok(())
}

/// One cgroup's memory.current, solid, and its memory.high and memory.max,
/// dashed, unless they would not fit.
fn draw_memory_series<'a, 'b: 'a>(
    mem: &mut Panel<'a, 'b>,
    chart: &Chart,
    s: &MemorySeries,
    colour: RGBColor,
) -> Drawn {
    mem.draw_series(LineSeries::new(
        s.current.iter().copied(),
        colour.stroke_width(2),
    ))?
    .label(format!("memory.current {}", s.cgroup))
    .legend(solid_legend(colour));
    for (points, colour, name) in [
        (&s.high, HIGH_COLOUR, "memory.high"),
        (&s.max, MAX_COLOUR, "memory.max"),
    ] {
        if points.is_empty() || points.iter().any(|&(_, y)| y > chart.memory_top) {
            continue;
        }
        mem.draw_series(DashedLineSeries::new(
            points.iter().copied(),
            8,
            5,
            colour.stroke_width(2),
        ))?
        .label(if chart.memory.len() > 1 {
            format!("{name} {}", s.cgroup)
        } else {
            name.to_owned()
        })
        .legend(move |(x, y)| {
            let style = colour.stroke_width(2);
            EmptyElement::at((x, y))
                + PathElement::new(vec![(0, 0), (8, 0)], style)
                + PathElement::new(vec![(12, 0), (20, 0)], style)
        });
    }
    Ok(())
}

/// Stall per second of each incident's cgroup, with the kill markers.
fn draw_stall(area: &Area, chart: &Chart) -> Drawn {
    let top = chart.stall_top;
    let mut stall = panel(area, chart.x, top, 36)?;
    stall
        .configure_mesh()
        .y_desc("stall (ms/s)")
        .x_desc("seconds since the stall began")
        .light_line_style(WHITE)
        .draw()?;
    for (k, (cgroup, steps)) in chart.stall.iter().enumerate() {
        let colour = MEMORY_COLOURS[k % MEMORY_COLOURS.len()];
        stall
            .draw_series(LineSeries::new(
                steps.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(format!("stall {cgroup}, {}", chart.stall_from))
            .legend(solid_legend(colour));
    }
    if chart.stall.is_empty() {
        draw_note(
            &mut stall,
            chart.x,
            top,
            "no stall data: no samples, reclaim or penalty-sleep events",
        )?;
    }
    for m in &chart.markers {
        draw_marker(&mut stall, m, top)?;
    }
    if !chart.stall.is_empty() {
        draw_legend(&mut stall, SeriesLabelPosition::UpperRight)?;
    }
    Ok(())
}

/// A panel over the chart's time axis, from 0 to `top`.
fn panel<'a, 'b>(
    area: &'a Area<'b>,
    (x0, x1): (f64, f64),
    top: f64,
    x_label_area: u32,
) -> Result<Panel<'a, 'b>, Box<dyn std::error::Error>> {
    Ok(ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(x_label_area)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, 0.0..top)?)
}

fn draw_marker(panel: &mut Panel, m: &Marker, top: f64) -> Drawn {
    panel.draw_series(std::iter::once(PathElement::new(
        vec![(m.at, 0.0), (m.at, top)],
        m.colour.stroke_width(2),
    )))?;
    Ok(())
}

/// Says, in the middle of an empty panel, why it is empty.
fn draw_note(panel: &mut Panel, (x0, x1): (f64, f64), top: f64, note: &'static str) -> Drawn {
    panel.draw_series(std::iter::once(Text::new(
        note,
        (x0 + (x1 - x0) * 0.3, top * 0.5),
        ("sans-serif", 16).into_font().color(&BLACK),
    )))?;
    Ok(())
}

fn draw_legend<'a, 'b: 'a>(panel: &mut Panel<'a, 'b>, position: SeriesLabelPosition) -> Drawn {
    panel
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// A legend's sample of a solid line.
fn solid_legend(colour: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::*;
    use crate::report::{analyze, svg};

    #[test]
    fn the_svg_shows_memory_falling_after_a_labelled_kill_marker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = seed_incident();
        let report = analyze(&records);
        let out = dir.path().join("incident.svg");
        svg(&records, &report, &out).expect("draws");

        let text = std::fs::read_to_string(&out).expect("written");
        let doc = roxmltree::Document::parse(&text).expect("well-formed SVG");
        assert_eq!(doc.root_element().tag_name().name(), "svg");

        let memory = polylines(&doc, MEMORY_COLOURS[0]);
        let series = memory
            .iter()
            .max_by_key(|p| p.len())
            .expect("a memory.current line");
        assert!(series.len() >= 10, "{series:?}");
        // SVG y grows downwards: the peak is the smallest y, the trough after
        // the kill the largest, and the trough comes later.
        let peak = series
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("peak");
        let trough = series
            .iter()
            .filter(|p| p.0 > peak.0)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("memory falls after the peak");

        let labels = texts(&doc);
        let (label, label_x) = labels
            .iter()
            .find(|(t, _)| t.contains("grep[4242]"))
            .expect("the victim is named");
        assert!(label.contains("SIGKILL"), "{label}");
        let title = labels.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>();
        assert!(
            title
                .iter()
                .any(|t| t.contains(SEED) && t.contains("2026-11-18")),
            "{title:?}"
        );

        let markers: Vec<f64> = polylines(&doc, KILL_COLOUR)
            .iter()
            .filter(|p| p.len() == 2 && p[0].0 == p[1].0)
            .map(|p| p[0].0)
            .collect();
        assert!(!markers.is_empty(), "no vertical kill marker");
        assert!(
            markers.iter().all(|x| (label_x - x).abs() < 15.0),
            "marker at {markers:?}, label at {label_x}"
        );
        assert!(
            markers.iter().all(|x| *x > peak.0 && *x < trough.0),
            "the kill at {markers:?} sits between the peak {peak:?} and the fall {trough:?}"
        );
    }
}
