# Condenses an EXPLAIN text over many partitions: a run of lines that name a
# partition (..._p<N>) or sit deeper than the run's first such line is printed
# as its first 4 lines plus a count. usage: awk -f condense_plan.awk plan.txt
function indent(s) { match(s, /^ */); return RLENGTH }
function flush() {
    if (run > 4) printf "%*s... %d more lines in this run (%d partitions named, %d nodes never executed)\n", base, "", run - 4, parts, never
    run = 0; parts = 0; never = 0
}
{
    is_part = ($0 ~ /_p[0-9]+( |$)/)
    if (run > 0 && (is_part || indent($0) > base)) {
        run++; parts += is_part; never += ($0 ~ /never executed/)
        if (run <= 4) print
        next
    }
    flush()
    if (is_part) { run = 1; parts = 1; never = ($0 ~ /never executed/); base = indent($0) }
    print
}
END { flush() }
