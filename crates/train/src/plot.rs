//! `plots/loss.png`: training loss per step and validation loss per evaluation, from `logs.jsonl`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::{Error, Result};

/// DejaVu Sans (Bitstream Vera licence, see assets/fonts/LICENSE-DejaVu.txt): plotters draws text
/// with it, so no system font library is needed.
static FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Step → loss for training and validation, the last record of each step (a resumed run redoes steps).
pub fn read_curves(log: &Path) -> Result<(BTreeMap<u64, f64>, BTreeMap<u64, f64>)> {
    let text = std::fs::read_to_string(log).map_err(|e| Error::Io {
        path: log.to_path_buf(),
        source: e,
    })?;
    let (mut train, mut val) = (BTreeMap::new(), BTreeMap::new());
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let step = v["step"].as_u64();
        match (v["event"].as_str(), step) {
            (Some("step"), Some(s)) => {
                if let Some(l) = v["loss"].as_f64() {
                    train.insert(s, l);
                }
            }
            (Some("eval"), Some(s)) => {
                if let Some(l) = v["val_loss"].as_f64() {
                    val.insert(s, l);
                }
            }
            _ => {}
        }
    }
    Ok((train, val))
}

/// Draws the loss curves of a run's `logs.jsonl` into `out` (PNG, 960×540).
pub fn loss_plot(log: &Path, out: &Path) -> Result<()> {
    register_font();
    let (train, val) = read_curves(log)?;
    let finite = |m: &BTreeMap<u64, f64>| m.values().copied().filter(|l| l.is_finite()).collect::<Vec<_>>();
    let all: Vec<f64> = finite(&train).into_iter().chain(finite(&val)).collect();
    if all.is_empty() {
        return Err(Error::Config(format!("{}: no losses to plot", log.display())));
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    let max_step = train.keys().chain(val.keys()).copied().max().unwrap_or(1).max(1);
    let top = all.iter().copied().fold(f64::MIN, f64::max) * 1.05;
    let bottom = all.iter().copied().fold(f64::MAX, f64::min).min(0.0);
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(out, (960, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("loss", ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0u64..max_step, bottom..top)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("cross-entropy")
            .draw()?;
        chart
            .draw_series(LineSeries::new(train.iter().map(|(s, l)| (*s, *l)), &BLUE))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        if !val.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    val.iter().map(|(s, l)| (*s, *l)),
                    RED.stroke_width(2),
                ))?
                .label("validation")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| Error::Config(format!("drawing {}: {e}", out.display())))
}
