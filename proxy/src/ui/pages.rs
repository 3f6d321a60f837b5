//! The pages: plain data in, HTML out, nothing else (the handlers in `mod.rs` gather the data). Every page
//! works without JavaScript; `berth.js` only adds copy buttons and the `/` shortcut to the filter.

use super::html::{human_size, time, Html};

/// What every page shows around its content.
#[derive(Debug, Clone, Default)]
pub struct Chrome {
    /// `HOST:PORT` as the browser reached the proxy: what `docker pull` lines name.
    pub host: String,
    /// The logged-in user.
    pub user: Option<String>,
    /// The session's form token (for the logout button).
    pub csrf: Option<String>,
    /// Now, Unix seconds (for relative times).
    pub now: u64,
}

fn open(h: &mut Html, c: &Chrome, title: &str) {
    h.s("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
        .s("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
        .s("<meta name=\"referrer\" content=\"same-origin\"><title>")
        .t(title)
        .s(" · berth</title><link rel=\"stylesheet\" href=\"/ui/static/berth.css\">")
        .s("<script src=\"/ui/static/berth.js\" defer></script></head><body>")
        .s("<a class=\"skip\" href=\"#main\">Skip to content</a><header><nav aria-label=\"Main\">")
        .s("<a class=\"brand\" href=\"/ui/\">berth</a><span class=\"host\">")
        .t(&c.host)
        .s("</span><a href=\"/ui/\">Repositories</a><a href=\"/ui/help\">Help</a>");
    if let Some(user) = &c.user {
        h.s("<span class=\"user\">Signed in as <strong>")
            .t(user)
            .s("</strong></span><form class=\"inline\" method=\"post\" action=\"/ui/logout\">")
            .s("<input type=\"hidden\" name=\"csrf\" value=\"")
            .t(c.csrf.as_deref().unwrap_or(""))
            .s("\"><button type=\"submit\" class=\"link\">Log out</button></form>");
    }
    h.s("</nav></header><main id=\"main\">");
}

fn close(mut h: Html) -> String {
    h.s("</main><footer>berth registry</footer></body></html>\n");
    h.finish()
}

/// A `<code>` line with a copy button (the button needs JavaScript; the text is selectable anyway).
fn copy_line(h: &mut Html, label: &str, text: &str) {
    // A read-only text area, so that a long command wraps and can be read whole.
    let rows = text.chars().count().div_ceil(72).clamp(1, 6) as u64;
    h.s("<div class=\"copy\"><label><span>")
        .t(label)
        .s("</span><textarea class=\"mono\" readonly spellcheck=\"false\" rows=\"")
        .n(rows)
        .s("\">")
        .t(text)
        .s("</textarea></label><button type=\"button\" class=\"copy-button\" data-copy=\"")
        .t(text)
        .s("\" hidden>Copy</button></div>");
}

fn repo_url(h: &mut Html, repo: &str) {
    h.s("/ui/r/").t(repo);
}

fn image_url(h: &mut Html, repo: &str, reference: &str) {
    h.s("/ui/r/").t(repo).s("/-/image/").t(reference);
}

/// A digest as a link to its image page; a digest that is none (a manifest can say anything) as text only.
fn digest_link(h: &mut Html, repo: &str, digest: &str, short: bool) {
    let text = if short { short_digest(digest) } else { digest };
    if !super::valid_digest(digest) {
        h.t(text);
        return;
    }
    h.s("<a href=\"");
    image_url(h, repo, digest);
    h.s("\" title=\"").t(digest).s("\">").t(text).s("</a>");
}

fn short_digest(d: &str) -> &str {
    match d.split_once(':') {
        Some((_, hex)) if hex.len() > 12 => &d[..d.len() - hex.len() + 12],
        _ => d,
    }
}

fn pager(h: &mut Html, base: &dyn Fn(&mut Html, usize), page: usize, pages: usize) {
    if pages <= 1 {
        return;
    }
    h.s("<nav class=\"pager\" aria-label=\"Pages\">");
    if page > 1 {
        h.s("<a rel=\"prev\" href=\"");
        base(h, page - 1);
        h.s("\">← Previous</a>");
    }
    h.s("<span>Page ")
        .n(page as u64)
        .s(" of ")
        .n(pages as u64)
        .s("</span>");
    if page < pages {
        h.s("<a rel=\"next\" href=\"");
        base(h, page + 1);
        h.s("\">Next →</a>");
    }
    h.s("</nav>");
}

// ---- login, errors, help ----

/// The login form.
pub fn login(c: &Chrome, next: &str, user: &str, error: Option<&str>) -> String {
    let mut h = Html::new();
    open(&mut h, c, "Log in");
    h.s("<section class=\"narrow\"><h1>Log in</h1>");
    if let Some(e) = error {
        h.s("<p class=\"error\" role=\"alert\">").t(e).s("</p>");
    }
    h.s("<form method=\"post\" action=\"/ui/login\" class=\"stack\">")
        .s("<input type=\"hidden\" name=\"next\" value=\"")
        .t(next)
        .s("\"><label for=\"user\">User name</label>")
        .s("<input id=\"user\" name=\"user\" autocomplete=\"username\" required autofocus value=\"")
        .t(user)
        .s("\"><label for=\"password\">Password</label>")
        .s("<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>")
        .s("<button type=\"submit\">Log in</button></form>")
        .s("<p class=\"muted\">The same user name and password as <code>docker login ")
        .t(&c.host)
        .s("</code>. First time here? <a href=\"/ui/help\">Make this computer trust the registry</a>.</p>")
        .s("</section>");
    close(h)
}

/// An error page: what went wrong, in words.
pub fn error(c: &Chrome, status: u16, title: &str, message: &str) -> String {
    let mut h = Html::new();
    open(&mut h, c, title);
    h.s("<section class=\"narrow\"><h1>")
        .t(title)
        .s("</h1><p class=\"status\">HTTP ")
        .n(u64::from(status))
        .s("</p><p>")
        .t(message)
        .s("</p><p><a href=\"/ui/\">Back to the repositories</a></p></section>");
    close(h)
}

/// What the help page knows of the development CA.
#[derive(Debug, Clone)]
pub struct CaInfo {
    /// Where the CA certificate is on the registry's machine.
    pub path: String,
    /// Its SHA-256 fingerprint, colon-separated hex.
    pub fingerprint: String,
}

/// The first-run help: trusting the development CA, logging in, pushing.
pub fn help(c: &Chrome, ca: Option<&CaInfo>) -> String {
    let mut h = Html::new();
    open(&mut h, c, "Getting started");
    let host = c.host.as_str();
    h.s("<h1>Getting started</h1>");
    match ca {
        Some(ca) => {
            h.s("<section><h2>1. Trust the registry's certificate authority</h2>")
                .s("<p>This registry's HTTPS certificate is issued by its own development CA, <code>devdockerCA.crt</code>, kept at <code>")
                .t(&ca.path)
                .s("</code> on the registry's machine. <a href=\"/ui/ca.crt\" download=\"devdockerCA.crt\">Download devdockerCA.crt</a> and check its SHA-256 fingerprint before you trust it:</p>")
                .s("<p class=\"mono fingerprint\">")
                .t(&ca.fingerprint)
                .s("</p>");
            copy_line(
                &mut h,
                "Fingerprint of the downloaded file",
                "openssl x509 -in devdockerCA.crt -noout -fingerprint -sha256",
            );
            h.s("<h3>Docker</h3>");
            copy_line(
                &mut h,
                "Docker trusts it for this registry only",
                &format!("sudo mkdir -p /etc/docker/certs.d/{host} && sudo cp devdockerCA.crt /etc/docker/certs.d/{host}/ca.crt"),
            );
            h.s("<h3>containerd</h3>");
            copy_line(
                &mut h,
                "containerd (ctr, nerdctl, Kubernetes nodes)",
                &format!("sudo mkdir -p /etc/containerd/certs.d/{host} && sudo cp devdockerCA.crt /etc/containerd/certs.d/{host}/ca.crt && printf 'server = \"https://{host}\"\\n\\n[host.\"https://{host}\"]\\n  ca = \"/etc/containerd/certs.d/{host}/ca.crt\"\\n' | sudo tee /etc/containerd/certs.d/{host}/hosts.toml"),
            );
            h.s("<p class=\"muted\">containerd reads <code>/etc/containerd/certs.d</code> when its CRI <code>config_path</code> points there (<code>ctr</code> needs <code>--hosts-dir /etc/containerd/certs.d</code>).</p>");
            h.s("<h3>The whole system (curl, podman, skopeo, browsers that use it)</h3>");
            copy_line(
                &mut h,
                "Debian and Ubuntu",
                "sudo cp devdockerCA.crt /usr/local/share/ca-certificates/berth-devdockerCA.crt && sudo update-ca-certificates",
            );
            copy_line(
                &mut h,
                "Fedora and RHEL",
                "sudo cp devdockerCA.crt /etc/pki/ca-trust/source/anchors/berth-devdockerCA.crt && sudo update-ca-trust",
            );
            h.s("<p class=\"muted\">On the registry's machine, <code>scripts/install-ca.sh</code> does all of this. Restart the Docker daemon only if it was started before the system store changed.</p></section>");
        }
        None => {
            h.s("<section><h2>1. The registry's certificate</h2><p>This registry's certificate is not issued by berth's development CA: it comes from the operator, and clients that trust the issuing authority need nothing more.</p></section>");
        }
    }
    h.s("<section><h2>2. Log in, push, pull</h2>");
    copy_line(&mut h, "Log in", &format!("docker login {host}"));
    copy_line(
        &mut h,
        "Tag and push an image",
        &format!(
            "docker tag alpine:latest {host}/alpine:latest && docker push {host}/alpine:latest"
        ),
    );
    copy_line(
        &mut h,
        "Pull it",
        &format!("docker pull {host}/alpine:latest"),
    );
    h.s("</section>");
    close(h)
}

// ---- repositories ----

/// A repository on the list.
#[derive(Debug, Clone)]
pub struct RepoRow {
    /// Its name.
    pub name: String,
    /// How many tags (`None`: could not be read).
    pub tags: Option<u64>,
    /// The last push of a tag.
    pub pushed: Option<u64>,
}

/// The repository list.
#[derive(Debug, Clone)]
pub struct Repos {
    /// The name filter.
    pub filter: String,
    /// This page (from 1) and how many.
    pub page: usize,
    /// How many pages.
    pub pages: usize,
    /// Repositories matching the filter, on all pages.
    pub total: usize,
    /// This page's.
    pub rows: Vec<RepoRow>,
}

/// The repository list page.
pub fn repos(c: &Chrome, r: &Repos) -> String {
    let mut h = Html::new();
    open(&mut h, c, "Repositories");
    h.s("<h1>Repositories</h1><form class=\"filter\" method=\"get\" action=\"/ui/\" role=\"search\">")
        .s("<label for=\"q\">Filter by name</label><input id=\"q\" name=\"q\" type=\"search\" value=\"")
        .t(&r.filter)
        .s("\" placeholder=\"name contains…\"><button type=\"submit\">Filter</button></form>");
    if r.rows.is_empty() {
        if r.filter.is_empty() {
            h.s("<div class=\"empty\"><p><strong>No images yet.</strong> Push one:</p>");
            copy_line(&mut h, "Push", &format!("docker push {}/name:tag", c.host));
            h.s("<p>New to this registry? <a href=\"/ui/help\">Getting started</a> says how to trust its certificate and log in.</p></div>");
        } else {
            h.s("<p class=\"empty\">No repository you may see has a name containing “")
                .t(&r.filter)
                .s("”. <a href=\"/ui/\">Show all</a></p>");
        }
        return close(h);
    }
    h.s("<p class=\"muted\">")
        .n(r.total as u64)
        .s(if r.total == 1 {
            " repository"
        } else {
            " repositories"
        })
        .s("</p><table class=\"list\"><thead><tr><th scope=\"col\">Name</th><th scope=\"col\" class=\"num\">Tags</th><th scope=\"col\">Last push</th></tr></thead><tbody>");
    for row in &r.rows {
        h.s("<tr><td><a href=\"");
        repo_url(&mut h, &row.name);
        h.s("\">").t(&row.name).s("</a></td><td class=\"num\">");
        match row.tags {
            Some(n) => h.n(n),
            None => h.s("?"),
        };
        h.s("</td><td>");
        time(&mut h, row.pushed, c.now);
        h.s("</td></tr>");
    }
    h.s("</tbody></table>");
    let filter = r.filter.clone();
    pager(
        &mut h,
        &move |h: &mut Html, p| {
            h.s("/ui/?q=").q(&filter).s("&amp;page=").n(p as u64);
        },
        r.page,
        r.pages,
    );
    close(h)
}

// ---- tags ----

/// A tag on a repository's page.
#[derive(Debug, Clone)]
pub struct TagRow {
    /// The tag.
    pub tag: String,
    /// What it points at.
    pub digest: String,
    /// Config plus layers (summed over an index's platforms).
    pub size: Option<u64>,
    /// `os/arch[/variant]` of each platform.
    pub platforms: Vec<String>,
    /// An artifact's type, when it is no image.
    pub artifact_type: Option<String>,
    /// When the tag was last pushed.
    pub pushed: Option<u64>,
}

/// A repository's tags.
#[derive(Debug, Clone)]
pub struct Tags {
    /// The repository.
    pub repo: String,
    /// The tag filter.
    pub filter: String,
    /// `name`, `-name`, `pushed` or `-pushed`.
    pub sort: String,
    /// This page (from 1).
    pub page: usize,
    /// How many pages.
    pub pages: usize,
    /// Tags matching the filter.
    pub total: usize,
    /// This page's.
    pub rows: Vec<TagRow>,
    /// Whether the delete controls show.
    pub can_delete: bool,
    /// A message after an action (`deleted tag x`).
    pub notice: Option<String>,
}

/// A repository's page: its tags.
pub fn tags(c: &Chrome, t: &Tags) -> String {
    let mut h = Html::new();
    open(&mut h, c, &t.repo);
    h.s("<nav class=\"crumbs\" aria-label=\"Breadcrumb\"><a href=\"/ui/\">Repositories</a> / <span>")
        .t(&t.repo)
        .s("</span></nav><h1>")
        .t(&t.repo)
        .s("</h1>");
    if let Some(n) = &t.notice {
        h.s("<p class=\"notice\" role=\"status\">").t(n).s("</p>");
    }
    // `latest` when this page has it, else the page's first tag.
    if let Some(tag) = t.rows.iter().find(|r| r.tag == "latest").or(t.rows.first()) {
        copy_line(
            &mut h,
            "Pull",
            &format!("docker pull {}/{}:{}", c.host, t.repo, tag.tag),
        );
    }
    h.s("<form class=\"filter\" method=\"get\" action=\"");
    repo_url(&mut h, &t.repo);
    h.s("\" role=\"search\"><label for=\"q\">Filter tags</label><input id=\"q\" name=\"q\" type=\"search\" value=\"")
        .t(&t.filter)
        .s("\"><input type=\"hidden\" name=\"sort\" value=\"")
        .t(&t.sort)
        .s("\"><button type=\"submit\">Filter</button></form>");
    if t.rows.is_empty() {
        if t.total > 0 {
            h.s("<p class=\"empty\">Nothing on this page any more: tags were deleted meanwhile. <a href=\"");
            repo_url(&mut h, &t.repo);
            h.s("\">Back to the first page</a></p>");
        } else if t.filter.is_empty() {
            h.s("<div class=\"empty\"><p>No tags in this repository.</p>");
            copy_line(
                &mut h,
                "Push one",
                &format!("docker push {}/{}:tag", c.host, t.repo),
            );
            h.s("</div>");
        } else {
            h.s("<p class=\"empty\">No tag contains “")
                .t(&t.filter)
                .s("”.</p>");
        }
        return close(h);
    }
    h.s("<p class=\"muted\">")
        .n(t.total as u64)
        .s(if t.total == 1 { " tag" } else { " tags" })
        .s("</p>");
    let sort_link = |h: &mut Html, label: &'static str, key: &'static str, desc: &'static str| {
        let (next, mark) = if t.sort == key {
            (desc, " ↑")
        } else if t.sort == desc {
            (key, " ↓")
        } else {
            (key, "")
        };
        h.s("<a href=\"");
        repo_url(h, &t.repo);
        h.s("?q=")
            .q(&t.filter)
            .s("&amp;sort=")
            .s(next)
            .s("\">")
            .s(label)
            .s(mark)
            .s("</a>");
    };
    h.s("<table class=\"list\"><thead><tr><th scope=\"col\">");
    sort_link(&mut h, "Tag", "name", "-name");
    h.s("</th><th scope=\"col\">Digest</th><th scope=\"col\" class=\"num\">Size</th><th scope=\"col\">Platforms</th><th scope=\"col\">");
    sort_link(&mut h, "Pushed", "-pushed", "pushed");
    h.s("</th>");
    if t.can_delete {
        h.s("<th scope=\"col\"><span class=\"sr\">Actions</span></th>");
    }
    h.s("</tr></thead><tbody>");
    for row in &t.rows {
        h.s("<tr><td class=\"tag\"><a href=\"");
        image_url(&mut h, &t.repo, &row.tag);
        h.s("\">").t(&row.tag).s("</a></td><td class=\"mono\">");
        digest_link(&mut h, &t.repo, &row.digest, true);
        h.s("</td><td class=\"num\">");
        match row.size {
            Some(n) => h.t(&human_size(n)),
            None => h.s("?"),
        };
        h.s("</td><td>");
        if row.platforms.is_empty() {
            match &row.artifact_type {
                Some(a) => h.s("<span class=\"muted\">").t(a).s("</span>"),
                None => h.s("<span class=\"muted\">—</span>"),
            };
        }
        for (i, p) in row.platforms.iter().enumerate() {
            if i > 0 {
                h.s(" ");
            }
            h.s("<span class=\"chip\">").t(p).s("</span>");
        }
        h.s("</td><td>");
        time(&mut h, row.pushed, c.now);
        h.s("</td>");
        if t.can_delete {
            h.s("<td><a class=\"danger\" href=\"");
            repo_url(&mut h, &t.repo);
            h.s("/-/delete?ref=")
                .q(&row.tag)
                .s("\" aria-label=\"Delete tag ")
                .t(&row.tag)
                .s("\">Delete</a></td>");
        }
        h.s("</tr>");
    }
    h.s("</tbody></table>");
    pager(
        &mut h,
        &|h: &mut Html, p| {
            repo_url(h, &t.repo);
            h.s("?q=")
                .q(&t.filter)
                .s("&amp;sort=")
                .q(&t.sort)
                .s("&amp;page=")
                .n(p as u64);
        },
        t.page,
        t.pages,
    );
    close(h)
}

// ---- an image ----

/// A descriptor as shown: layers, index children, referrers.
#[derive(Debug, Clone, Default)]
pub struct Item {
    /// The digest.
    pub digest: String,
    /// The media type.
    pub media_type: String,
    /// Bytes.
    pub size: u64,
    /// An index child's platform; a referrer's artifact type.
    pub label: Option<String>,
    /// A referrer's creation time (its annotation), as written.
    pub created: Option<String>,
}

/// What an image's config says.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// `os/arch[/variant]`.
    pub platform: String,
    /// The `created` field, as written.
    pub created: Option<String>,
    /// Entrypoint, as an argument list.
    pub entrypoint: Option<Vec<String>>,
    /// Cmd, as an argument list.
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Environment.
    pub env: Vec<String>,
    /// Labels, sorted.
    pub labels: Vec<(String, String)>,
    /// Exposed ports.
    pub ports: Vec<String>,
    /// History: when, what created it, whether it made no layer.
    pub history: Vec<(Option<String>, String, bool)>,
}

/// What an image page shows.
#[derive(Debug, Clone)]
pub enum Body {
    /// An image (or an artifact) manifest.
    Image {
        /// Its config, when it is an image config that could be read.
        config: Option<Box<Config>>,
        /// The config descriptor's media type (an artifact's type).
        config_type: Option<String>,
        /// The layers.
        layers: Vec<Item>,
    },
    /// An index: its platforms.
    Index {
        /// The children.
        manifests: Vec<Item>,
    },
}

/// An image (a manifest or an index).
#[derive(Debug, Clone)]
pub struct Image {
    /// The repository.
    pub repo: String,
    /// The tag it was opened by, if any.
    pub tag: Option<String>,
    /// Its digest.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Its artifact type, if any.
    pub artifact_type: Option<String>,
    /// The manifest's own size.
    pub manifest_size: u64,
    /// Image or index.
    pub body: Body,
    /// Signatures, SBOMs and other artifacts that refer to it.
    pub referrers: Vec<Item>,
    /// Whether the delete controls show.
    pub can_delete: bool,
}

fn argv(v: &Option<Vec<String>>) -> String {
    match v {
        None => String::new(),
        Some(args) => serde_json::to_string(args).unwrap_or_default(),
    }
}

fn dl(h: &mut Html, key: &'static str, value: &str) {
    if value.is_empty() {
        return;
    }
    h.s("<dt>")
        .s(key)
        .s("</dt><dd class=\"mono\">")
        .t(value)
        .s("</dd>");
}

/// An image's page.
pub fn image(c: &Chrome, i: &Image) -> String {
    let mut h = Html::new();
    let title = match &i.tag {
        Some(t) => format!("{}:{t}", i.repo),
        None => format!("{}@{}", i.repo, short_digest(&i.digest)),
    };
    open(&mut h, c, &title);
    h.s("<nav class=\"crumbs\" aria-label=\"Breadcrumb\"><a href=\"/ui/\">Repositories</a> / <a href=\"");
    repo_url(&mut h, &i.repo);
    h.s("\">").t(&i.repo).s("</a> / <span>");
    match &i.tag {
        Some(t) => h.t(t),
        None => h.t(short_digest(&i.digest)),
    };
    h.s("</span></nav><h1>").t(&title).s("</h1>");
    if let Some(t) = &i.tag {
        copy_line(
            &mut h,
            "Pull by tag",
            &format!("docker pull {}/{}:{t}", c.host, i.repo),
        );
    }
    copy_line(
        &mut h,
        "Pull by digest",
        &format!("docker pull {}/{}@{}", c.host, i.repo, i.digest),
    );
    h.s("<dl class=\"facts\"><dt>Digest</dt><dd class=\"mono digest\">")
        .t(&i.digest)
        .s("</dd><dt>Media type</dt><dd class=\"mono\">")
        .t(&i.media_type)
        .s("</dd>");
    if let Some(a) = &i.artifact_type {
        dl(&mut h, "Artifact type", a);
    }
    h.s("<dt>Manifest size</dt><dd>")
        .t(&human_size(i.manifest_size))
        .s("</dd>");
    match &i.body {
        Body::Image { layers, .. } => {
            let total = layers.iter().fold(0u64, |a, l| a.saturating_add(l.size));
            h.s("<dt>Layers</dt><dd><span class=\"layer-count\">")
                .n(layers.len() as u64)
                .s("</span> (")
                .t(&human_size(total))
                .s(")</dd>");
        }
        Body::Index { manifests } => {
            h.s("<dt>Platforms</dt><dd>")
                .n(manifests.len() as u64)
                .s("</dd>");
        }
    }
    h.s("</dl>");
    match &i.body {
        Body::Index { manifests } => {
            h.s("<section><h2>Platforms</h2><table class=\"list\"><thead><tr><th scope=\"col\">Platform</th><th scope=\"col\">Digest</th><th scope=\"col\" class=\"num\">Manifest size</th></tr></thead><tbody>");
            for m in manifests {
                h.s("<tr><td>")
                    .t(m.label.as_deref().unwrap_or("unknown"))
                    .s("</td><td class=\"mono\">");
                digest_link(&mut h, &i.repo, &m.digest, false);
                h.s("</td><td class=\"num\">")
                    .t(&human_size(m.size))
                    .s("</td></tr>");
            }
            h.s("</tbody></table></section>");
        }
        Body::Image {
            config,
            config_type,
            layers,
        } => {
            if let Some(cfg) = config {
                h.s("<section><h2>Configuration</h2><dl class=\"facts\">");
                dl(&mut h, "Platform", &cfg.platform);
                if let Some(created) = &cfg.created {
                    dl(&mut h, "Created", created);
                }
                dl(&mut h, "Entrypoint", &argv(&cfg.entrypoint));
                dl(&mut h, "Command", &argv(&cfg.cmd));
                dl(
                    &mut h,
                    "Working directory",
                    cfg.working_dir.as_deref().unwrap_or(""),
                );
                dl(&mut h, "User", cfg.user.as_deref().unwrap_or(""));
                if !cfg.ports.is_empty() {
                    dl(&mut h, "Exposed ports", &cfg.ports.join(", "));
                }
                h.s("</dl>");
                if !cfg.env.is_empty() {
                    h.s("<h3>Environment</h3><ul class=\"mono plain\">");
                    for e in &cfg.env {
                        h.s("<li>").t(e).s("</li>");
                    }
                    h.s("</ul>");
                }
                if !cfg.labels.is_empty() {
                    h.s("<h3>Labels</h3><table class=\"list\"><tbody>");
                    for (k, v) in &cfg.labels {
                        h.s("<tr><th scope=\"row\" class=\"mono\">")
                            .t(k)
                            .s("</th><td class=\"mono\">")
                            .t(v)
                            .s("</td></tr>");
                    }
                    h.s("</tbody></table>");
                }
                if !cfg.history.is_empty() {
                    h.s("<h3>History</h3><ol class=\"history\">");
                    for (when, by, empty) in &cfg.history {
                        h.s("<li><code>").t(by).s("</code>");
                        if let Some(w) = when {
                            h.s(" <span class=\"muted\">").t(w).s("</span>");
                        }
                        if *empty {
                            h.s(" <span class=\"chip\">no layer</span>");
                        }
                        h.s("</li>");
                    }
                    h.s("</ol>");
                }
                h.s("</section>");
            } else if let Some(t) = config_type {
                h.s("<p class=\"muted\">Config type <code>")
                    .t(t)
                    .s("</code>.</p>");
            }
            h.s("<section><h2>Layers</h2>");
            if layers.is_empty() {
                h.s("<p class=\"muted\">No layers.</p>");
            } else {
                h.s("<table class=\"list layers\"><thead><tr><th scope=\"col\" class=\"num\">#</th><th scope=\"col\">Digest</th><th scope=\"col\">Media type</th><th scope=\"col\" class=\"num\">Size</th></tr></thead><tbody>");
                for (n, l) in layers.iter().enumerate() {
                    h.s("<tr><td class=\"num\">")
                        .n(n as u64 + 1)
                        .s("</td><td class=\"mono\" title=\"")
                        .t(&l.digest)
                        .s("\">")
                        .t(short_digest(&l.digest))
                        .s("</td><td class=\"mono small\">")
                        .t(&l.media_type)
                        .s("</td><td class=\"num\">")
                        .t(&human_size(l.size))
                        .s("</td></tr>");
                }
                h.s("</tbody></table>");
            }
            h.s("</section>");
        }
    }
    h.s("<section><h2>Referrers</h2>");
    if i.referrers.is_empty() {
        h.s("<p class=\"muted\">No signatures, SBOMs or other artifacts refer to this manifest.</p>");
    } else {
        h.s("<table class=\"list referrers\"><thead><tr><th scope=\"col\">Artifact type</th><th scope=\"col\">Digest</th><th scope=\"col\" class=\"num\">Size</th><th scope=\"col\">Created</th></tr></thead><tbody>");
        for r in &i.referrers {
            h.s("<tr><td class=\"mono\">")
                .t(r.label.as_deref().unwrap_or("unknown"))
                .s("</td><td class=\"mono\">");
            digest_link(&mut h, &i.repo, &r.digest, true);
            h.s("</td><td class=\"num\">")
                .t(&human_size(r.size))
                .s("</td><td>")
                .t(r.created.as_deref().unwrap_or(""))
                .s("</td></tr>");
        }
        h.s("</tbody></table>");
    }
    h.s("</section>");
    if i.can_delete {
        h.s("<section class=\"danger-zone\"><h2>Delete</h2><p>");
        if let Some(t) = &i.tag {
            h.s("<a class=\"danger\" href=\"");
            repo_url(&mut h, &i.repo);
            h.s("/-/delete?ref=")
                .q(t)
                .s("\">Delete tag ")
                .t(t)
                .s("</a> ");
        }
        h.s("<a class=\"danger\" href=\"");
        repo_url(&mut h, &i.repo);
        h.s("/-/delete?ref=")
            .q(&i.digest)
            .s("\">Delete this manifest and every tag on it</a></p></section>");
    }
    close(h)
}

/// The confirmation step of a delete.
pub fn confirm_delete(c: &Chrome, repo: &str, reference: &str, is_tag: bool) -> String {
    let mut h = Html::new();
    open(&mut h, c, "Delete");
    h.s("<section class=\"narrow\"><h1>Delete ")
        .s(if is_tag { "tag" } else { "manifest" })
        .s("?</h1><p>");
    if is_tag {
        h.s("The tag <strong class=\"mono\">")
            .t(reference)
            .s("</strong> of <strong>")
            .t(repo)
            .s("</strong> goes; the image stays if other tags or digests use it.");
    } else {
        h.s("The manifest <strong class=\"mono\">")
            .t(reference)
            .s("</strong> of <strong>")
            .t(repo)
            .s("</strong> goes, with every tag that points at it. Pulls by this digest stop working.");
    }
    h.s("</p><form method=\"post\" action=\"");
    repo_url(&mut h, repo);
    h.s("/-/delete\"><input type=\"hidden\" name=\"csrf\" value=\"")
        .t(c.csrf.as_deref().unwrap_or(""))
        .s("\"><input type=\"hidden\" name=\"ref\" value=\"")
        .t(reference)
        .s("\"><button type=\"submit\" class=\"danger\">Delete</button> <a href=\"");
    if is_tag {
        image_url(&mut h, repo, reference);
    } else {
        repo_url(&mut h, repo);
    }
    h.s("\">Cancel</a></form></section>");
    close(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chrome() -> Chrome {
        Chrome {
            host: "registry.test:5043".into(),
            user: Some("alice<b>".into()),
            csrf: Some("tok".into()),
            now: 1_000_000,
        }
    }

    const HOSTILE: &str = "<script>alert(1)</script>\"'&";

    fn assert_no_injection(page: &str) {
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("\"'&\""), "{page}");
    }

    #[test]
    fn the_repository_list_shows_counts_and_escapes_names() {
        let page = repos(
            &chrome(),
            &Repos {
                filter: HOSTILE.into(),
                page: 2,
                pages: 3,
                total: 60,
                rows: vec![RepoRow {
                    name: "team/app".into(),
                    tags: Some(12),
                    pushed: Some(1_000_000 - 120),
                }],
            },
        );
        assert!(page.contains("href=\"/ui/r/team/app\">team/app</a>"));
        assert!(page.contains("<td class=\"num\">12</td>"));
        assert!(page.contains("2 minutes ago"));
        assert!(page.contains("Page 2 of 3"));
        assert!(page.contains("alice&lt;b&gt;"));
        assert_no_injection(&page);
        // The filter goes back into links percent-encoded.
        assert!(page.contains("q=%3Cscript%3Ealert%281%29%3C%2Fscript%3E"));
    }

    #[test]
    fn an_empty_registry_says_how_to_push() {
        let page = repos(
            &chrome(),
            &Repos {
                filter: String::new(),
                page: 1,
                pages: 1,
                total: 0,
                rows: vec![],
            },
        );
        assert!(page.contains("No images yet"));
        assert!(page.contains("docker push registry.test:5043/name:tag"));
    }

    #[test]
    fn tags_show_digest_size_platforms_and_delete_controls_only_when_allowed() {
        let mut t = Tags {
            repo: "app".into(),
            filter: String::new(),
            sort: "name".into(),
            page: 1,
            pages: 1,
            total: 1,
            rows: vec![TagRow {
                tag: "v1".into(),
                digest: format!("sha256:{}", "ab".repeat(32)),
                size: Some(3 * 1024 * 1024),
                platforms: vec!["linux/amd64".into(), HOSTILE.into()],
                artifact_type: None,
                pushed: Some(999_000),
            }],
            can_delete: false,
            notice: Some(HOSTILE.into()),
        };
        let page = tags(&chrome(), &t);
        assert!(page.contains("sha256:abababababab<"));
        assert!(page.contains("3.0 MiB"));
        assert!(page.contains("<span class=\"chip\">linux/amd64</span>"));
        assert!(!page.contains("/-/delete"));
        assert_no_injection(&page);
        t.can_delete = true;
        let page = tags(&chrome(), &t);
        assert!(page.contains("/ui/r/app/-/delete?ref=v1"));
    }

    #[test]
    fn an_image_page_shows_config_layers_and_referrers_escaped() {
        let i = Image {
            repo: "app".into(),
            tag: Some("v1".into()),
            digest: format!("sha256:{}", "cd".repeat(32)),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            artifact_type: None,
            manifest_size: 700,
            body: Body::Image {
                config: Some(Box::new(Config {
                    platform: "linux/amd64".into(),
                    created: Some("2026-01-01T00:00:00Z".into()),
                    entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
                    cmd: Some(vec![HOSTILE.into()]),
                    env: vec![format!("X={HOSTILE}")],
                    labels: vec![(HOSTILE.into(), HOSTILE.into())],
                    ports: vec!["80/tcp".into()],
                    history: vec![(None, HOSTILE.into(), true)],
                    ..Config::default()
                })),
                config_type: None,
                layers: vec![
                    Item {
                        digest: "sha256:1".into(),
                        media_type: "l".into(),
                        size: 10,
                        ..Item::default()
                    },
                    Item {
                        digest: "sha256:2".into(),
                        media_type: "l".into(),
                        size: 20,
                        ..Item::default()
                    },
                ],
            },
            referrers: vec![Item {
                digest: "sha256:3".into(),
                media_type: "m".into(),
                size: 5,
                label: Some("application/vnd.example.sbom".into()),
                created: None,
            }],
            can_delete: true,
        };
        let page = image(&chrome(), &i);
        assert!(page.contains("docker pull registry.test:5043/app:v1"));
        assert!(page.contains(&format!(
            "docker pull registry.test:5043/app@sha256:{}",
            "cd".repeat(32)
        )));
        assert!(page.contains("<span class=\"layer-count\">2</span>"));
        assert!(page.contains("80/tcp"));
        assert!(page.contains("application/vnd.example.sbom"));
        assert!(page.contains("/-/delete?ref=v1"));
        assert_no_injection(&page);
    }

    #[test]
    fn only_real_digests_become_links() {
        let mut h = Html::new();
        digest_link(&mut h, "app", "../../../v2/x/tags/list", false);
        assert_eq!(h.finish(), "../../../v2/x/tags/list");
        let d = format!("sha256:{}", "ef".repeat(32));
        let mut h = Html::new();
        digest_link(&mut h, "app", &d, true);
        assert!(h
            .finish()
            .starts_with(&format!("<a href=\"/ui/r/app/-/image/{d}\"")));
    }

    #[test]
    fn the_help_page_names_the_ca_and_the_trust_commands() {
        let page = help(
            &chrome(),
            Some(&CaInfo {
                path: "/certs/devdockerCA.crt".into(),
                fingerprint: "AB:CD".into(),
            }),
        );
        assert!(page.contains("href=\"/ui/ca.crt\""));
        assert!(page.contains("/etc/docker/certs.d/registry.test:5043/ca.crt"));
        assert!(page.contains("update-ca-certificates"));
        assert!(page.contains("/etc/containerd/certs.d/registry.test:5043"));
        assert!(page.contains("AB:CD"));
    }

    #[test]
    fn login_and_confirmation_escape_what_they_echo() {
        let page = login(&chrome(), HOSTILE, HOSTILE, Some(HOSTILE));
        assert_no_injection(&page);
        let page = confirm_delete(&chrome(), "app", "v1", true);
        assert!(page.contains("name=\"csrf\" value=\"tok\""));
        assert!(page.contains("action=\"/ui/r/app/-/delete\""));
    }
}
