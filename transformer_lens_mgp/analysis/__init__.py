"""What a circuit does: faithfulness on held-out pairs, circuits chosen as baselines,
faithfulness against size, edges between kept nodes, figures, the HTML report and run
folders. Plotting (and plotly) is imported only by ``plotting`` and ``report``."""
