"""Self-contained SVG line charts for HTML reports: no JavaScript, no CDN, readable offline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]
    color: str | None = None


@dataclass(frozen=True)
class Marker:
    """A vertical line at x with a label (an event on a time axis)."""

    x: float
    label: str
    color: str = "#6b7280"


@dataclass(frozen=True)
class LineChart:
    title: str
    series: Sequence[Series]
    x_labels: dict[float, str] = field(default_factory=dict)
    markers: Sequence[Marker] = ()
    thresholds: Sequence[tuple[float, str]] = ()
    y_range: tuple[float, float] | None = None
    width: int = 860
    height: int = 280

    def to_svg(self) -> str:
        left, right, top, bottom = 56, 16, 36, 48
        plot_w, plot_h = self.width - left - right, self.height - top - bottom
        xs = [x for s in self.series for x, y in s.points if _finite(y)] + [m.x for m in self.markers]
        ys = [y for s in self.series for _, y in s.points if _finite(y)] + [t for t, _ in self.thresholds]
        x_min, x_max = (min(xs), max(xs)) if xs else (0.0, 1.0)
        y_min, y_max = self.y_range or ((min(ys), max(ys)) if ys else (0.0, 1.0))
        x_max = x_max if x_max > x_min else x_min + 1
        y_max = y_max if y_max > y_min else y_min + 1

        def px(x: float) -> float:
            return left + (x - x_min) / (x_max - x_min) * plot_w

        def py(y: float) -> float:
            return top + plot_h - (y - y_min) / (y_max - y_min) * plot_h

        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.width} {self.height}" '
            f'width="{self.width}" height="{self.height}" role="img" aria-label="{escape(self.title)}" '
            'font-family="system-ui, sans-serif" font-size="11">',
            f'<text x="{left}" y="20" font-size="14" font-weight="600">{escape(self.title)}</text>',
            f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#f9fafb" stroke="#e5e7eb"/>',
        ]
        for i in range(5):
            value = y_min + (y_max - y_min) * i / 4
            parts.append(
                f'<line x1="{left}" x2="{left + plot_w}" y1="{py(value):.1f}" y2="{py(value):.1f}" stroke="#e5e7eb"/>'
                f'<text x="{left - 6}" y="{py(value) + 4:.1f}" text-anchor="end" fill="#374151">{value:.2f}</text>'
            )
        for x, label in self.x_labels.items():
            parts.append(
                f'<text x="{px(x):.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="#374151">{escape(label)}</text>'
            )
        for value, label in self.thresholds:
            parts.append(
                f'<line x1="{left}" x2="{left + plot_w}" y1="{py(value):.1f}" y2="{py(value):.1f}" '
                f'stroke="#f59e0b" stroke-dasharray="6 4"/><text x="{left + plot_w - 4}" y="{py(value) - 4:.1f}" '
                f'text-anchor="end" fill="#b45309">{escape(label)}</text>'
            )
        for index, marker in enumerate(self.markers):
            label_y = top + 12 + 12 * (index % 3)
            parts.append(
                f'<line x1="{px(marker.x):.1f}" x2="{px(marker.x):.1f}" y1="{top}" y2="{top + plot_h}" '
                f'stroke="{marker.color}" stroke-dasharray="3 3"/><text x="{px(marker.x) + 3:.1f}" y="{label_y}" '
                f'fill="{marker.color}">{escape(marker.label)}</text>'
            )
        for index, series in enumerate(self.series):
            color = series.color or PALETTE[index % len(PALETTE)]
            for segment in _segments(series.points):
                path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in segment)
                parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            legend_x = left + 8 + 170 * index
            parts.append(
                f'<rect x="{legend_x}" y="{self.height - 16}" width="12" height="4" fill="{color}"/>'
                f'<text x="{legend_x + 16}" y="{self.height - 11}" fill="#111827">{escape(series.name)}</text>'
            )
        parts.append("</svg>")
        return "".join(parts)


def _finite(value: float) -> bool:
    return value is not None and math.isfinite(value)


def _segments(points: Sequence[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """Split a series at missing values so a gap shows as a gap, not as a line through it."""
    segments: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if _finite(y):
            segments[-1].append((x, y))
        elif segments[-1]:
            segments.append([])
    return [s for s in segments if s]
