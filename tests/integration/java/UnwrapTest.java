/*
 * Java 17 SunPKCS11 on cmkp11: the PKCS11 KeyStore lists the key (which
 * needs the certificate object that "certificates = generate" puts beside
 * it), and the private key unwraps an AES data key wrapped outside the
 * token with the certificate's public key. The unwrapped key then opens
 * AES-GCM data sealed with the original. TAP output.
 *
 *   java UnwrapTest SUNPKCS11-CONFIG      (the PIN in CMKP11_TEST_PIN)
 */
import java.nio.charset.StandardCharsets;
import java.security.Key;
import java.security.KeyStore;
import java.security.NoSuchAlgorithmException;
import java.security.PrivateKey;
import java.security.Provider;
import java.security.PublicKey;
import java.security.SecureRandom;
import java.security.Security;
import java.security.Signature;
import java.security.cert.X509Certificate;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import javax.crypto.Cipher;
import javax.crypto.KeyGenerator;
import javax.crypto.NoSuchPaddingException;
import javax.crypto.SecretKey;
import javax.crypto.spec.GCMParameterSpec;

public class UnwrapTest {
    private static int count = 0;
    private static int failed = 0;

    private static void ok(boolean cond, String what) {
        count++;
        if (!cond) {
            failed++;
        }
        System.out.println((cond ? "ok " : "not ok ") + count + " - " + what);
    }

    private static void diag(String what) {
        System.out.println("# " + what);
    }

    private static byte[] gcm(int mode, Key key, byte[] iv, byte[] in, Provider p)
            throws Exception {
        Cipher c = p == null ? Cipher.getInstance("AES/GCM/NoPadding", "SunJCE")
                             : Cipher.getInstance("AES/GCM/NoPadding", p);
        c.init(mode, key, new GCMParameterSpec(128, iv));
        c.updateAAD("cmkp11 envelope".getBytes(StandardCharsets.UTF_8));
        return c.doFinal(in);
    }

    /* Unwraps through SunPKCS11 and checks the key opens the sealed data. */
    private static void unwrapCase(String transformation, Provider p11, PrivateKey priv,
            PublicKey pub, SecretKey dek, byte[] iv, byte[] sealed, byte[] data)
            throws Exception {
        Cipher wrap = Cipher.getInstance(transformation, "SunJCE");
        wrap.init(Cipher.WRAP_MODE, pub);
        byte[] wrapped = wrap.wrap(dek);
        Cipher unwrap = Cipher.getInstance(transformation, p11);
        unwrap.init(Cipher.UNWRAP_MODE, priv);
        Key back = null;
        try {
            back = unwrap.unwrap(wrapped, "AES", Cipher.SECRET_KEY);
        } catch (Exception e) {
            diag(transformation + " unwrap: " + e);
        }
        ok(back != null, transformation + ": SunPKCS11 unwraps the data key");
        if (back == null) {
            return;
        }
        byte[] raw = back.getEncoded();
        if (raw != null) {
            ok(Arrays.equals(raw, dek.getEncoded()),
               transformation + ": the unwrapped key is the original");
        }
        byte[] opened = null;
        try {
            opened = gcm(Cipher.DECRYPT_MODE, back, iv, sealed, p11);
        } catch (Exception e) {
            diag("AES-GCM through SunPKCS11: " + e);
        }
        ok(opened != null && Arrays.equals(opened, data),
           transformation + ": it opens AES-GCM data sealed with the original");
    }

    public static void main(String[] args) throws Exception {
        String pin = System.getenv("CMKP11_TEST_PIN");
        Provider p11 = Security.getProvider("SunPKCS11").configure(args[0]);
        Security.addProvider(p11);

        KeyStore ks = KeyStore.getInstance("PKCS11", p11);
        ks.load(null, pin.toCharArray());
        List<String> aliases = Collections.list(ks.aliases());
        Collections.sort(aliases);
        diag("aliases: " + aliases);
        ok(aliases.contains("kek"), "the PKCS11 KeyStore lists the key kek");
        ok(aliases.contains("kek@01"), "and its older version kek@01");
        ok(ks.isKeyEntry("kek"), "kek is a key entry");
        PrivateKey priv = (PrivateKey) ks.getKey("kek", null);
        ok(priv != null && "RSA".equals(priv.getAlgorithm()), "its private key is an RSA key");
        X509Certificate cert = (X509Certificate) ks.getCertificate("kek");
        ok(cert != null, "with a certificate");
        if (priv == null || cert == null) {
            System.out.println("1.." + count);
            System.exit(1);
        }
        PublicKey pub = cert.getPublicKey();
        ok("CN=kek".equals(cert.getSubjectX500Principal().getName()),
           "the certificate's subject is CN=kek");
        boolean verified;
        try {
            cert.verify(pub);
            verified = true;
        } catch (Exception e) {
            diag("verify: " + e);
            verified = false;
        }
        ok(verified, "it is self-signed by the key in the token");

        /* Signing through the token, checked with the certificate. */
        byte[] msg = "customer-managed key".getBytes(StandardCharsets.UTF_8);
        Signature s = Signature.getInstance("SHA256withRSA", p11);
        s.initSign(priv);
        s.update(msg);
        byte[] sig = s.sign();
        Signature v = Signature.getInstance("SHA256withRSA", "SunRsaSign");
        v.initVerify(pub);
        v.update(msg);
        ok(v.verify(sig), "SHA256withRSA through SunPKCS11 verifies with the certificate");

        /* The envelope: data sealed outside with a fresh AES key. */
        KeyGenerator kg = KeyGenerator.getInstance("AES", "SunJCE");
        kg.init(256);
        SecretKey dek = kg.generateKey();
        byte[] iv = new byte[12];
        new SecureRandom().nextBytes(iv);
        byte[] data = "envelope-encrypted data held by a Java application"
                          .getBytes(StandardCharsets.UTF_8);
        byte[] sealed = gcm(Cipher.ENCRYPT_MODE, dek, iv, data, null);

        boolean oaep;
        try {
            Cipher.getInstance("RSA/ECB/OAEPWithSHA-1AndMGF1Padding", p11);
            oaep = true;
        } catch (NoSuchAlgorithmException | NoSuchPaddingException e) {
            oaep = false;
        }
        if (oaep) {
            unwrapCase("RSA/ECB/OAEPWithSHA-1AndMGF1Padding", p11, priv, pub, dek, iv,
                       sealed, data);
        } else {
            diag("SunPKCS11 in Java " + System.getProperty("java.version")
                 + " has no RSA-OAEP cipher; unwrapping with PKCS#1 v1.5");
        }
        unwrapCase("RSA/ECB/PKCS1Padding", p11, priv, pub, dek, iv, sealed, data);

        System.out.println("1.." + count);
        System.exit(failed == 0 ? 0 : 1);
    }
}
